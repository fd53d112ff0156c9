"""Keep a started server's own objects out of the garbage collector's full collections.

Once the model has loaded, the server holds ~530,000 objects that CPython's cyclic
collector tracks: the modules, classes and functions of torch, transformers and Gradio,
the model, the page. Each full collection walks all of them, 300-500 ms on the 2-core
machine with the interpreter held, and one set off by a class's questions delays every
answer of that wave (docs/reliability.md). They live as long as the process, so
`gc.freeze()` moves them to the permanent generation, which collections skip.

Objects made later (sessions, requests, adapters, fine-tune jobs) are collected as
before. A frozen object that dies later is still freed by reference counting; only one
that dies inside a reference cycle stays: once, for what was alive at the freeze besides
the start-up objects (sessions and requests that arrived while the model loaded), which
is bounded. `gc.freeze` acts on the whole process, so only a blocking server launch calls
this, never a test or a notebook that builds the app.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_start_up_objects() -> int:
    """Collect once, then freeze every object alive now; returns how many are frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d start-up objects kept out of full garbage collections (%.2f s)", frozen,
             time.perf_counter() - started)
    return frozen
