"""The one long-lived thread that runs model.generate for streaming answers.

A streamed answer needs generate() on another thread than the one reading the tokens.
Starting a fresh thread per request made a server's resident memory creep up for
thousands of requests: each new thread draws its memory from one of the C allocator's
per-thread arenas, and the model's tensors left every arena fragmented. One persistent
thread keeps those allocations in one arena, where freed memory is reused; it also saves
the thread start on every answer's first token. Generation is serialised by the engine
lock anyway, so one thread costs no concurrency.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Callable

_lock = threading.Lock()
_jobs: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None


def _serve() -> None:
    while True:
        future, work = _jobs.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            work()
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(err)
        else:
            future.set_result(None)


def submit(work: Callable[[], None]) -> concurrent.futures.Future:
    """Run `work` on the generation thread; the Future completes when it returns.

    `work` must not itself wait for other submitted work (it would wait forever). The
    thread is a daemon, as the per-request threads were: a server can always exit.
    """
    global _thread
    future: concurrent.futures.Future = concurrent.futures.Future()
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="vitdemo-generate", daemon=True)
            _thread.start()
        _jobs.put((future, work))
    return future
