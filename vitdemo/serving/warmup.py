"""Warm the server up before the first students ask.

- `warm_up`: one short batched answer at start. The first answers after a server starts
  cost more than later ones (first calls into the processor, generation and the batching
  scheduler's code paths): on a quiet 2-core machine the first class of 30 waited 4.6 s at
  p95 where the next waited 2.0 s (docs/reliability.md).
- `import_event_guard_modules`: Gradio runs every event inside a guard that reads
  matplotlib's backend; the first read imports matplotlib and pyplot (0.35-0.55 s here), on
  the server's event loop, so the first question after start waited for it and every
  request that arrived meanwhile with it.
"""

from __future__ import annotations

import logging
import threading
import time

from PIL import Image

from vitdemo.chat.conversation import GenerationSettings, stream_answer, user_message
from vitdemo.core.engine import Engine

log = logging.getLogger(__name__)

WARMUP_ROWS = 2  # two at once, so the batched path (left padding, per-row streams) runs too
WARMUP_TOKENS = 2


def import_event_guard_modules() -> bool:
    """Import now what Gradio's per-event matplotlib guard imports at the first event (it
    reads the backend, which imports pyplot). False if matplotlib is not installed (the
    guard then imports nothing either)."""
    started = time.perf_counter()
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.get_backend()
    log.debug("matplotlib imported for Gradio's event guard in %.2f s", time.perf_counter() - started)
    return True


def warm_up(engine: Engine) -> float | None:
    """Answer a question about a blank picture WARMUP_ROWS times at once; seconds taken, or
    None if it failed (logged: a server that cannot warm up still serves)."""
    started = time.perf_counter()
    failures: list[BaseException] = []

    def ask(size: int) -> None:
        try:
            image = Image.new("RGB", (size, size), "white")
            list(stream_answer(engine, [user_message("Describe the image.", 1)], [image],
                               GenerationSettings(max_new_tokens=WARMUP_TOKENS)))
        except Exception as err:  # noqa: BLE001 - a warm-up never stops the server
            failures.append(err)

    threads = [threading.Thread(target=ask, args=(64 + 32 * i,), name=f"vitdemo-warmup-{i}")
               for i in range(WARMUP_ROWS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        log.warning("warm-up answer failed (the server serves anyway): %s", failures[0])
        return None
    seconds = time.perf_counter() - started
    log.info("warmed up in %.2f s", seconds)
    return seconds
