"""Make a new Gradio session cheap to open.

Gradio builds a config for every block of the page when a session sends its first event
(`SessionState.__init__`), on the server's event loop: ~270 blocks here, 12 ms and ~1,400
objects that the garbage collector tracks, per session. A class of 30-100 API clients
asking for the first time at the same moment queued behind those builds (measured with
py-spy: ~5 s of the event loop for 60 first requests), and each session kept its copy.

`share_session_configs` gives every new session the block configs of one template state,
built once, and copies a block's config the first time that session reads it (Gradio reads
an entry to edit it in place, e.g. an output's new value): a new session costs ~0.01 ms and
a few objects, and a session's first events copy only the configs they touch.

`cache_init_signatures` halves the cost of the configs Gradio still builds (for each block
it calls `inspect.signature(cls.__init__)`, which returns a function's `__signature__` when
it has one, PEP 362), e.g. each output's config when an event replaces a component.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterable
from typing import Any

from gradio.state_holder import SessionState, StateHolder
from gradio.utils import safe_deepcopy  # how Gradio itself copies a config

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


class _SharedConfigs(dict):
    """A session's `config_values` (block id -> that block's config) that starts out sharing
    the configs of a template state and copies one the first time this session reads it.

    Gradio 6 reads an entry to edit it in place (`SessionState._update_value_in_config`),
    replaces entries by assignment, and only iterates (`components`, the deep-link route,
    which copies what it reads). Methods that could hand out a shared config copy it first
    (`copy`, pickling and deep copies make every entry this session's own); `items()`,
    `values()`, `dict(x)` and `{**x}` hand out shared ones, for reading only."""

    def __init__(self, configs: dict[int, dict]) -> None:
        super().__init__(configs)
        self._own: set[int] = set()  # entries this session has its own copy of

    def _owned(self, key: int, value: Any) -> Any:
        if key in self._own:
            return value
        value = safe_deepcopy(value)
        super().__setitem__(key, value)
        self._own.add(key)
        return value

    def __getitem__(self, key: int) -> Any:
        return self._owned(key, super().__getitem__(key))

    def get(self, key: int, default: Any = None) -> Any:
        """As dict.get, through the copy on first read."""
        return self[key] if key in self else default

    def setdefault(self, key: int, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: int, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        value = self[key]
        super().pop(key)
        self._own.discard(key)
        return value

    def popitem(self) -> tuple[int, Any]:
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self))
        return key, self.pop(key)

    def __setitem__(self, key: int, value: Any) -> None:
        super().__setitem__(key, value)
        self._own.add(key)

    def update(self, other: Any = (), **more: Any) -> None:
        pairs: Iterable = ((k, other[k]) for k in other.keys()) if hasattr(other, "keys") else other
        for key, value in [*pairs, *more.items()]:
            self[key] = value

    def __ior__(self, other: Any) -> _SharedConfigs:
        self.update(other)
        return self

    def __or__(self, other: Any) -> dict:
        return {**self.copy(), **other}

    def copy(self) -> dict:  # type: ignore[override]
        """A plain dict of this session's own copies (as dict.copy, its values are not copied again)."""
        return {key: self[key] for key in self}

    __copy__ = copy

    def __deepcopy__(self, memo: dict) -> dict:
        return {key: safe_deepcopy(dict.__getitem__(self, key)) for key in self}  # copies; nothing becomes own

    def __reduce__(self) -> tuple:
        return dict, (self.copy(),)


# The fields SessionState.__init__ sets (Gradio 6.31): a state made from the template gets
# fresh ones of each mutable field. Another Gradio's state, with other fields, is its own.
_STATE_FIELDS = {"blocks_config", "config_values", "state_data", "_state_ttl", "is_closed", "STATE_TTL_WHEN_CLOSED"}


def _state_like(template: SessionState, demo: Any) -> SessionState:
    """A new session state equal to `SessionState(demo)`, sharing `template`'s block configs."""
    state = copy.copy(template)
    state.blocks_config = copy.copy(demo.default_config)  # as SessionState.__init__ does
    state.config_values = _SharedConfigs(template.config_values)
    state.state_data = {}
    state._state_ttl = {}
    return state


def share_session_configs(demo: Any) -> bool:
    """After launch: new sessions start from one template's block configs (see the module
    docstring). False, with Gradio's own states kept, if this Gradio's state is not the one
    this was written for. The template is built now, so a block changed later (the app
    changes none) would not reach new sessions."""
    holder = getattr(demo, "state_holder", None)
    # Before launch the server's own holder does not exist yet; a subclass is not the holder this was written for.
    if not getattr(demo, "is_running", False) or type(holder) is not StateHolder:
        return False
    template = SessionState(demo)
    if set(vars(template)) != _STATE_FIELDS:
        logger.info("this Gradio's session state has fields %s: new sessions build their own",
                    sorted(set(vars(template)) ^ _STATE_FIELDS))
        return False
    holder.vitdemo_template = template  # type: ignore[attr-defined]  # before the switch: the server is running
    holder.__class__ = _SharedConfigStateHolder
    return True


class _SharedConfigStateHolder(StateHolder):
    """Gradio's StateHolder whose new sessions share a template's block configs."""

    def __getitem__(self, session_id: str) -> Any:
        if session_id not in self.session_data:  # type: ignore[attr-defined]
            self.session_data[session_id] = _state_like(self.vitdemo_template, self.blocks)  # type: ignore[attr-defined]
        return super().__getitem__(session_id)  # type: ignore[misc]
