"""The Engine: the one loaded model of a process, its processor, adapters and lock.

Every forward pass or generate call takes `engine.lock`, so concurrent users (the UI
queue, the attention tab, the CLI) never interleave on the shared model. Adapters are
PEFT (LoRA) folders: loaded once, then switched on and off in place.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from vitdemo.errors import BusyError, ModelLoadError
from vitdemo.core.fair_lock import FairLock
from vitdemo.core.loading import LoadedModel, load_model, resolve_model_source

if TYPE_CHECKING:  # core does not need the settings module at run time
    from vitdemo.config import Settings

logger = logging.getLogger(__name__)

# Sentinel: "the server's default adapter" (set by use_adapter; None = the base model).
# Calls that pass no adapter get the same model whatever another user's call switched to.
KEEP = object()

DEFAULT_MAX_ADAPTERS = 8  # LoRA adapters kept loaded at once (Settings.max_loaded_adapters)

# `active_adapter` after a batch whose rows used different adapters (peft's mixed batches).
MIXED = "<mixed adapters>"


class Engine:
    """Holds a LoadedModel, the active adapter and the lock around the model."""

    def __init__(self, loaded: LoadedModel | concurrent.futures.Future, *, lock_timeout_s: float = 600.0,
                 source: str | None = None, max_adapters: int = DEFAULT_MAX_ADAPTERS) -> None:
        # A Future while the model loads in the background (see load_in_background).
        self._loaded = loaded
        self.source = source or getattr(loaded, "source", "")
        # Held around every forward/generate and adapter switch; first come, first served, so
        # an attention capture gets the model between two of the scheduler's batches.
        self.lock = FairLock()
        self.lock_timeout_s = lock_timeout_s  # waiting longer than this is a BusyError
        self._adapters: dict[str, str] = {}  # resolved path -> peft adapter name
        # Adapters stay loaded for reuse, at most max_adapters of them: loading one more
        # unloads the least recently used (never the server default, never one used in the
        # current lock hold); an adapter whose folder was removed (a pruned job) goes at once.
        self.max_adapters = max(1, int(max_adapters))
        self._adapter_seq = 0  # peft names a0, a1, ...: never reused after an unload
        self._tick = 0  # counts adapter uses
        self._hold_start = 0  # the first tick of the current lock hold (begin_hold)
        self._last_use: dict[str, int] = {}  # resolved path -> the tick of its last use
        self._active: str | None = None  # resolved path of the active adapter, None = base
        self.default_adapter: str | None = None  # what KEEP means: use_adapter sets it
        self._peft: Any = None  # the PeftModel wrapper once an adapter was loaded
        self._pending_load: threading.Thread | None = None  # a deferred background load
        self._start_lock = threading.Lock()
        self._scheduler: Any = None  # the batching scheduler, made on first use
        self._mixable: dict[str, bool] = {}  # adapter folder -> its LoRA layers are all in the language model

    @classmethod
    def from_settings(cls, settings: Settings) -> "Engine":
        """Load the model the settings name (default model if none) and its adapter."""
        engine = cls(_load_from_settings(settings, resolve_model_source(settings.model, settings.home)),
                     max_adapters=settings.max_loaded_adapters)
        if settings.adapter:
            engine.use_adapter(settings.adapter)
        return engine

    @classmethod
    def load_in_background(cls, settings: Settings, *, start: bool = True) -> "Engine":
        """An Engine at once; the model loads in a thread and the first use waits for it.

        The web page can be served while torch and transformers import (seconds); a load
        error is raised by the first use of `loaded` (and by `wait_loaded`). With
        start=False the thread starts on `start_loading()` (or on first use): `launch`
        starts it once the server answers, so the imports do not compete with the page's.
        """
        source = str(resolve_model_source(settings.model, settings.home))
        future: concurrent.futures.Future = concurrent.futures.Future()
        engine = cls(future, source=source, max_adapters=settings.max_loaded_adapters)

        def load() -> None:
            try:
                future.set_result(_load_from_settings(settings, source))
                if settings.adapter:
                    engine.use_adapter(settings.adapter)
            except BaseException as err:  # noqa: BLE001 - handed to whoever uses the engine
                if not future.done():
                    future.set_exception(err)
                else:  # the model loaded but its adapter did not: fall back to the base model
                    logger.error("adapter %s not loaded: %s", settings.adapter, err)

        engine._pending_load = threading.Thread(target=load, name="vitdemo-model-load", daemon=True)
        if start:
            engine.start_loading()
        return engine

    def start_loading(self) -> None:
        """Start a deferred background load (no-op if it started or the model is there)."""
        with self._start_lock:
            thread, self._pending_load = self._pending_load, None
        if thread is not None:
            thread.start()

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model (waits for a background load; raises its error if it failed)."""
        if isinstance(self._loaded, concurrent.futures.Future):
            self.start_loading()
            try:
                self._loaded = self._loaded.result()
            except ModelLoadError:
                raise
            except Exception as err:  # noqa: BLE001 - any loader failure reads the same to a user
                raise ModelLoadError(f"the model {self.source} failed to load: {err}") from err
        return self._loaded

    @property
    def is_loaded(self) -> bool:
        return not isinstance(self._loaded, concurrent.futures.Future) or self._loaded.done()

    def wait_loaded(self) -> LoadedModel:
        """Block until the model is loaded; raises the load error, if any."""
        return self.loaded

    # --- what callers use ---
    @property
    def model(self) -> Any:
        """The transformers model; LoRA layers, when loaded, are injected into it in place."""
        return self.loaded.model

    @property
    def processor(self) -> Any:
        return self.loaded.processor

    @property
    def device(self) -> str:
        return self.loaded.device

    @property
    def active_adapter(self) -> str | None:
        """Folder of the adapter in use, or None for the base model."""
        return self._active

    @contextlib.contextmanager
    def locked(self, adapter: Any = KEEP) -> Iterator[Any]:
        """Hold the lock (BusyError after lock_timeout_s), switch adapter if asked, yield the model."""
        if not self.lock.acquire(timeout=self.lock_timeout_s):
            raise BusyError(f"the model has been busy for {self.lock_timeout_s:.0f}s; try again in a moment")
        try:
            self.begin_hold()
            self._switch(self.default_adapter if adapter is KEEP else adapter)
            yield self.model
        finally:
            self.lock.release()

    def acquire(self, adapter: Any = KEEP) -> None:
        """Take the lock and switch adapter, for code that releases it from another thread."""
        if not self.lock.acquire(timeout=self.lock_timeout_s):
            raise BusyError(f"the model has been busy for {self.lock_timeout_s:.0f}s; try again in a moment")
        try:
            self.begin_hold()
            self._switch(self.default_adapter if adapter is KEEP else adapter)
        except BaseException:
            self.lock.release()
            raise

    @property
    def scheduler(self) -> Any:
        """The batching scheduler in front of this engine's generate (vitdemo.core.scheduler)."""
        with self._start_lock:
            if self._scheduler is None:
                from vitdemo.core.scheduler import Scheduler

                self._scheduler = Scheduler(self)
            return self._scheduler

    def use_adapter(self, path: str | os.PathLike | None) -> None:
        """Make `path` (a PEFT adapter folder) the server's default adapter; None = the base model.

        Per-user choices pass `adapter=` to locked/acquire (or to chat.stream_answer) instead.
        """
        with self.locked(adapter=path):
            self.default_adapter = self._active

    def describe(self) -> str:
        """One line for logs and the UI: model, device, quantization, adapter."""
        lm = self.loaded
        adapter = f", adapter {self._active}" if self._active else ""
        return f"{lm.source} on {lm.device} (quant {lm.quantized}, {lm.dtype}{adapter})"

    # --- batches (called by the scheduler with the lock held) ---
    def prepare_adapter(self, adapter: Any) -> str | None:
        """The folder a request's adapter choice means (KEEP = the server default), loaded."""
        path = self.default_adapter if adapter is KEEP else adapter
        if path is None or str(path) == "":
            return None
        return self._ensure_loaded(path)

    def can_mix_adapter(self, resolved: str | None) -> bool:
        """Whether rows with this adapter can share a generate with rows of other adapters.

        peft's mixed batches pick each row's adapter by its index in the batch; a LoRA layer
        in the vision tower sees images, not rows, so such adapters run in groups of their own.
        """
        if resolved is None:
            return True
        if resolved not in self._mixable:
            from peft.tuners.lora import LoraLayer

            name = self._adapters[resolved]
            language = {id(m) for m in self.model.get_decoder().modules()}
            head = self.model.get_output_embeddings()
            self._mixable[resolved] = all(
                id(m) in language or m is head
                for m in self.model.modules()
                if isinstance(m, LoraLayer) and name in m.lora_A
            )
        return self._mixable[resolved]

    def batch_adapter_names(self, resolved: list[str | None]) -> list[str] | None:
        """Set up the weights for one batch: one adapter for all rows -> switch to it and
        return None; several -> enable the adapter layers and return peft's per-row names."""
        if len(set(resolved)) == 1:
            self._switch(resolved[0])
            return None
        self._peft.base_model.enable_adapter_layers()
        self._active = MIXED
        return ["__base__" if r is None else self._adapters[r] for r in resolved]

    def adapter_hooks(self, names: list[str]) -> Any:
        """A context in which the model's forward gives row i adapter names[i] (peft's
        mixed-batch hooks, what PeftModel.generate(adapter_names=...) uses inside)."""
        return self._peft._enable_peft_forward_hooks(adapter_names=names)

    @property
    def loaded_adapters(self) -> list[str]:
        """Folders of the adapters in memory now, least recently used first."""
        return sorted(self._adapters, key=self._last_use.__getitem__)

    # --- internals (called with the lock held) ---
    def begin_hold(self) -> None:
        """Call right after taking `lock` (locked/acquire do): a new hold, in which nothing
        generates yet, so adapters whose folder is gone (a pruned job) are unloaded now."""
        self._hold_start = self._tick + 1
        for path in list(self._adapters):
            if path != self.default_adapter and not (Path(path) / "adapter_config.json").is_file():
                self._unload(path, "its folder was removed")
        self._trim(self.max_adapters)  # one hold may have needed more (a batch of several)

    def _trim(self, keep: int) -> None:
        """Unload the least recently used adapters until `keep` are left (or none is idle)."""
        while len(self._adapters) > keep:
            idle = [p for p in self._adapters if p != self.default_adapter and self._last_use[p] < self._hold_start]
            if not idle:  # all in use now: load one more rather than pull weights from under a request
                logger.warning("%d adapters loaded (limit %d), none idle", len(self._adapters), self.max_adapters)
                return
            self._unload(min(idle, key=self._last_use.__getitem__), "least recently used")

    def _touch(self, resolved: str) -> None:
        self._tick += 1
        self._last_use[resolved] = self._tick

    def _unload(self, path: str, why: str) -> None:
        name = self._adapters.pop(path)
        self._last_use.pop(path, None)
        if path == self._active:  # the base model until the next switch sets an adapter
            self._peft.base_model.disable_adapter_layers()
            self._active = None
        if self._adapters:
            with warnings.catch_warnings():  # peft warns when the active one goes; logged below
                warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                self._peft.delete_adapter(name)
        else:  # peft keeps no valid state without an adapter: take its layers out of the model
            self._peft.unload()
            self._peft = None
        logger.info("adapter %s unloaded (%s)", path, why)

    def _switch(self, path: str | os.PathLike | None) -> None:
        if path is None or str(path) == "":
            if self._peft is not None and self._active is not None:
                self._peft.base_model.disable_adapter_layers()
                logger.info("adapter off: base model")
            self._active = None
            return
        resolved = str(Path(path).expanduser().resolve())
        if resolved == self._active:
            self._touch(resolved)
            return
        self._ensure_loaded(resolved)
        self._peft.set_adapter(self._adapters[resolved])
        self._peft.base_model.enable_adapter_layers()
        self._active = resolved
        logger.info("adapter on: %s", resolved)

    def _ensure_loaded(self, path: str | os.PathLike) -> str:
        """Load the adapter folder once (ModelLoadError if it is not one or does not fit)."""
        resolved = str(Path(path).expanduser().resolve())
        if not (Path(resolved) / "adapter_config.json").is_file():
            raise ModelLoadError(f"{path} is not a PEFT adapter folder (no adapter_config.json in it)")
        try:
            self._load_adapter(resolved)
        except ModelLoadError:
            raise
        except Exception as err:  # noqa: BLE001 - peft raises many kinds
            raise ModelLoadError(
                f"adapter {path} does not fit model {self.loaded.source}: {str(err).splitlines()[0][:300]}"
            ) from err
        return resolved

    def _load_adapter(self, resolved: str) -> None:
        if resolved in self._adapters:
            self._touch(resolved)
            return
        self._trim(self.max_adapters - 1)  # room for this one
        from peft import PeftModel

        name = f"a{self._adapter_seq}"
        self._adapter_seq += 1
        if self._peft is None:
            # Wraps the model and injects LoRA layers into it in place; self.model stays
            # the same object, so generate() on it goes through the adapter.
            self._peft = PeftModel.from_pretrained(self.loaded.model, resolved, adapter_name=name)
        else:
            self._peft.load_adapter(resolved, adapter_name=name)
        self._peft.eval()
        self._adapters[resolved] = name
        self._touch(resolved)
        # Loading may switch adapter layers on: the next _switch must set them again.
        self._active = MIXED


def _load_from_settings(settings: Settings, source: str) -> LoadedModel:
    return load_model(
        source,
        quant=settings.quant,
        device=settings.device,
        dtype=settings.dtype,
        attn_implementation=settings.attn_implementation,
        trust_remote_code=settings.trust_remote_code,
    )
