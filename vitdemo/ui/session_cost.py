"""Make a new Gradio session cheaper to open.

Gradio builds a config for every block of the page when a session sends its first event
(`SessionState.__init__`), on the server's event loop, and again for each output of every
event. For each block it calls `inspect.signature(cls.__init__)`, about 60% of that work on
this app's ~270 blocks. A class of 30-100 API clients asking for the first time at the same
moment queues behind it: measured with py-spy, ~5 s of the event loop for 60 first requests.

`inspect.signature` returns a function's `__signature__` attribute when it has one (PEP 362),
so computing each component class's signature once at start-up gives the same config for
about half the cost. Nothing else in Gradio changes.

Even so a new session costs a few ms of the event loop, so `keep_sessions_ready` also builds
session states ahead, while no session is opening, and a new session takes one of those.

Those states share the page's per-block configs (`_SharedConfigs`) instead of holding a copy
each: a copy was ~1,400 objects that every full garbage collection walks, 12 ms to build.
"""

from __future__ import annotations

import collections
import copy
import inspect
import logging
import threading
import time
import weakref
from typing import Any

from gradio.state_holder import SessionState, StateHolder

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

    Gradio reads an entry to edit it in place (`SessionState._update_value_in_config`: an
    output's new value) and replaces entries by assignment; the deep-link route only
    iterates, and copies what it reads. So a session's edits stay its own."""

    def __init__(self, template: dict) -> None:
        super().__init__(template)
        self._own: set = set()

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if key not in self._own:
            value = copy.deepcopy(value)
            super().__setitem__(key, value)
            self._own.add(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._own.add(key)


# What SessionState.__init__ sets (Gradio 6): a state built from a template replaces each
# mutable one. Another Gradio's state with other fields is built by Gradio itself.
_STATE_FIELDS = {"blocks_config", "config_values", "state_data", "_state_ttl", "is_closed", "STATE_TTL_WHEN_CLOSED"}


def _state_like(template: SessionState, demo: Any) -> SessionState:
    """A new session state equal to `SessionState(demo)`, sharing `template`'s block configs."""
    state = copy.copy(template)
    state.blocks_config = copy.copy(demo.default_config)
    state.config_values = _SharedConfigs(template.config_values)
    state.state_data = {}
    state._state_ttl = {}
    return state


class ReadySessions:
    """Session states built ahead of time, while nobody is opening a session.

    Even with the signatures cached, a new session's state costs a few ms of the event loop,
    and a class of 30 opening sessions at the same moment (API clients send their first event
    with their first question) queues behind 30 of them, longer when generation threads hold
    the interpreter. Built ahead, between classes, a session takes a ready one instead.
    """

    def __init__(self, demo: Any, size: int, idle_s: float = 2.0) -> None:
        self._demo = weakref.ref(demo)  # the thread must not keep a closed app (and its model) alive
        self.size, self.idle_s = size, idle_s
        self.ready: collections.deque = collections.deque()
        self.last_take = 0.0
        self.last_busy = 0.0  # when requests were last seen running or waiting
        self.wanted = threading.Event()
        self.wanted.set()
        self.built = 0
        self.template: SessionState | None = None  # Gradio's own state, whose configs the others share
        self.thread = threading.Thread(target=self._fill, name="vitdemo-ready-sessions", daemon=True)
        self.thread.start()

    def take(self) -> Any | None:
        """A ready session state, or None (the caller builds one as usual)."""
        self.last_take = time.monotonic()
        self.wanted.set()
        try:
            return self.ready.popleft()
        except IndexError:
            return None

    def _running_demo(self) -> Any | None:
        demo = self._demo()
        return demo if demo is not None and getattr(demo, "is_running", False) else None

    def _fill(self) -> None:
        while True:
            self.wanted.wait(timeout=5.0)  # wakes now and then to notice a closed app
            if self._running_demo() is None:
                return
            if not self.wanted.is_set():
                continue
            self.wanted.clear()
            while len(self.ready) < self.size:
                demo = self._running_demo()
                if demo is None:
                    return
                wait_s = self._wait_before_build(time.monotonic(), _queue_busy(demo))
                if wait_s > 0:
                    time.sleep(wait_s)
                    continue
                self._build_one()

    def _wait_before_build(self, now: float, queue_busy: bool) -> float:
        """Seconds to wait before building the next state (0: build now).

        Building holds the interpreter for some ms, so it waits until sessions have stopped
        opening and the queue has been quiet for `idle_s`: a class's follow-up questions
        leave the queue empty for a moment between two answers, and a state built then
        delays the next questions."""
        if queue_busy:
            self.last_busy = now
        quiet_for = now - max(self.last_take, self.last_busy)
        # Short naps: the queue is looked at again (and a new burst noticed) every 0.2 s at most.
        return min(self.idle_s - quiet_for, 0.2) if quiet_for < self.idle_s else 0.0

    def _build_one(self) -> None:
        demo = self._running_demo()
        if demo is None:
            return
        try:
            if self.template is None:
                template = SessionState(demo)
                if set(vars(template)) != _STATE_FIELDS:
                    logger.info("this Gradio's session state has fields %s: states built ahead are Gradio's own",
                                sorted(set(vars(template)) ^ _STATE_FIELDS))
                self.template = template
            if set(vars(self.template)) == _STATE_FIELDS:
                state = _state_like(self.template, demo)
            else:
                state = SessionState(demo)
        except Exception:  # noqa: BLE001 - meanwhile sessions are built on demand, as by Gradio
            logger.exception("could not build a session state ahead; trying again in 5 s")
            time.sleep(5.0)
            return
        self.built += 1
        self.ready.append(state)


def _queue_busy(demo: Any) -> bool:
    """Is any event running or waiting in the app's queue? (Gradio's Queue, as in ui/queue_limit.py)"""
    queue = getattr(demo, "_queue", None)
    if queue is None:
        return False
    try:
        return len(queue) > 0 or any(job is not None for job in queue.active_jobs)
    except (AttributeError, TypeError):  # another Gradio: build whenever sessions are quiet
        return False
    except Exception:  # noqa: BLE001 - e.g. the event loop added a queue while we counted: ask again later
        return True


def keep_sessions_ready(demo: Any, size: int, idle_s: float = 2.0) -> ReadySessions | None:
    """After launch: new sessions take a state built ahead (up to `size` kept ready, built
    once no session has opened and the queue has been quiet for `idle_s`)."""
    holder = getattr(demo, "state_holder", None)
    # Before launch the server's own holder does not exist yet; a subclass is not the holder this was written for.
    if size <= 0 or not getattr(demo, "is_running", False) or type(holder) is not StateHolder:
        return None
    pool = ReadySessions(demo, size, idle_s)
    holder.__class__ = _ReadyStateHolder
    holder.vitdemo_ready = pool  # type: ignore[attr-defined]
    return pool


class _ReadyStateHolder(StateHolder):
    """Gradio's StateHolder whose new sessions start from a state built ahead (see ReadySessions)."""

    def __getitem__(self, session_id: str) -> Any:
        if session_id not in self.session_data:  # type: ignore[attr-defined]
            state = self.vitdemo_ready.take()  # type: ignore[attr-defined]
            if state is not None:
                self.session_data[session_id] = state  # type: ignore[attr-defined]
        return super().__getitem__(session_id)  # type: ignore[misc]
