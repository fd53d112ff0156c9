"""Keep Python's full garbage collections out of a class's questions.

A full (oldest-generation) collection walks every container object the server keeps and
holds the interpreter meanwhile: with the session states built ahead for a class (about
650,000 objects with the default 128), one took 300-375 ms here, and it fell at random
into a wave of questions (docs/reliability.md, "Garbage collection pauses"). Objects that
live as long as the server (the page, the model's modules, states built ahead) need not
be walked again and again: `freeze_long_lived` moves everything alive into the
interpreter's permanent generation, which collections skip.

Frozen objects that later become cyclic garbage are reclaimed only after a thaw, so
`thaw_and_collect` runs one full collection over everything; call it only while the
server is idle (the ready-session builder does, before each refill).
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def thaw_and_collect() -> int:
    """Return frozen objects to the collector and collect everything now; objects freed."""
    started = time.perf_counter()
    gc.unfreeze()
    freed = gc.collect()
    logger.debug("full collection while idle: %d objects freed in %.0f ms", freed,
                 1000 * (time.perf_counter() - started))
    return freed


def freeze_long_lived() -> int:
    """Exempt every object alive now from later collections; how many are frozen."""
    gc.freeze()
    return gc.get_freeze_count()
