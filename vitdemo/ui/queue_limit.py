"""The app's queue: how many requests may wait, how many run at once, and what a user reads
when it is full (how long to wait, from recent answer times, instead of Gradio's bare
"Queue is full! Please try again.").

Gradio's clients drop the server's text on a full queue (status 503), but they show a
validation refusal's message (status 422): the page next to the input, gradio_client in its
ValidationError. So the size limit is applied here, before Gradio's own push, and a refusal
is sent as a validation message. This leans on Gradio's queue internals (`Blocks._queue`,
`Queue.push`, `BlockFunction.fn`), pinned to gradio 6.31; tests/app/test_queue_limit.py
fails if they change.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from typing import Any, Callable

import gradio as gr

from vitdemo.config import Settings
from vitdemo.serving.waiting import AnswerTimes, busy_message
from vitdemo.ui.chat import GENERATE_GROUP

logger = logging.getLogger(__name__)

# GENERATE_GROUP: the events that run the model through the batching scheduler;
# `Settings.concurrency` of them are in progress at once (twice the scheduler's batch by
# default, so the next batch is ready while one generates).
# Every other queued event that does not set its own limit (the Attention capture, the
# Learn tab's runs, Fine-tune checks): one at a time per event. These hold the model with
# eager attention or walk a dataset; running two of the same at once only makes both wait.
TOOL_CONCURRENCY = 1


def _timed(fn: Callable[..., Any], times: AnswerTimes) -> Callable[..., Any]:
    """`fn` that records how long each call that finishes takes (a stopped one is not an answer)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            yield from fn(*args, **kwargs)
            times.record(time.perf_counter() - start)
        return generator

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.record(time.perf_counter() - start)
        return result
    return plain


def configure_queue(demo: gr.Blocks, settings: Settings) -> AnswerTimes:
    """Queue `demo` with the app's limits; returns the answer times the refusals quote.

    Every event in GENERATE_GROUP gets `settings.concurrency` (Gradio gives a group the
    lowest limit of its events, so one event left at the default would throttle them all),
    other events keep their own limit or TOOL_CONCURRENCY.
    """
    times = AnswerTimes()
    for fn in demo.fns.values():
        if fn.concurrency_id == GENERATE_GROUP:
            fn.concurrency_limit = settings.concurrency
            if fn.fn is not None and not inspect.iscoroutinefunction(fn.fn):
                fn.fn = _timed(fn.fn, times)
    demo.queue(max_size=None, default_concurrency_limit=TOOL_CONCURRENCY)
    queue = demo._queue  # noqa: SLF001 - see the module docstring
    gradio_push = queue.push

    async def push(body: Any, request: Any, username: str | None) -> Any:
        waiting = len(queue)
        if waiting >= settings.queue_size:
            message = busy_message(waiting, settings.concurrency, times.typical())
            logger.warning("queue full (%d waiting): refused a request", waiting)
            return False, [{"__type__": "validate", "is_valid": False, "message": message,
                            "parameter_name": "queue"}], "validator_error"
        return await gradio_push(body, request, username)

    queue.push = push
    return times
