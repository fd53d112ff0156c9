"""Make a new Gradio session cheaper to open.

Gradio builds a config for every block of the page when a session sends its first event
(`SessionState.__init__`), on the server's event loop, and again for each output of every
event. For each block it calls `inspect.signature(cls.__init__)`, about 60% of that work on
this app's ~270 blocks. A class of 30-100 API clients asking for the first time at the same
moment queues behind it: measured with py-spy, ~5 s of the event loop for 60 first requests.

`inspect.signature` returns a function's `__signature__` attribute when it has one (PEP 362),
so computing each component class's signature once at start-up gives the same config for
about half the cost. Nothing else in Gradio changes.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)


def cache_init_signatures(demo: Any) -> int:
    """Attach `__signature__` to the `__init__` of every block class on the page (and their
    bases). Returns how many were attached; already cached ones are left as they are."""
    attached = 0
    for block in list(demo.blocks.values()):
        for cls in type(block).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None or hasattr(init, "__signature__"):
                continue
            try:
                init.__signature__ = inspect.signature(init)
            except (TypeError, ValueError, AttributeError):  # builtins and slot wrappers take no attributes
                continue
            attached += 1
    logger.debug("cached %d component __init__ signatures", attached)
    return attached
