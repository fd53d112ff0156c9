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
from pathlib import Path
from typing import Any, Iterator

from vitdemo.errors import BusyError, ModelLoadError
from vitdemo.core.loading import LoadedModel, load_model, resolve_model_source

logger = logging.getLogger(__name__)

# Sentinel: "the server's default adapter" (set by use_adapter; None = the base model).
# Calls that pass no adapter get the same model whatever another user's call switched to.
KEEP = object()


class Engine:
    """Holds a LoadedModel, the active adapter and the lock around the model."""

    def __init__(self, loaded: LoadedModel | concurrent.futures.Future, *, lock_timeout_s: float = 600.0,
                 source: str | None = None) -> None:
        # A Future while the model loads in the background (see load_in_background).
        self._loaded = loaded
        self.source = source or getattr(loaded, "source", "")
        self.lock = threading.Lock()  # held around every forward/generate and adapter switch
        self.lock_timeout_s = lock_timeout_s  # waiting longer than this is a BusyError
        self._adapters: dict[str, str] = {}  # resolved path -> peft adapter name
        self._active: str | None = None  # resolved path of the active adapter, None = base
        self.default_adapter: str | None = None  # what KEEP means: use_adapter sets it
        self._peft: Any = None  # the PeftModel wrapper once an adapter was loaded
        self._pending_load: threading.Thread | None = None  # a deferred background load
        self._start_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> "Engine":
        """Load the model the settings name (default model if none) and its adapter."""
        engine = cls(_load_from_settings(settings, resolve_model_source(settings.model, settings.home)))
        if settings.adapter:
            engine.use_adapter(settings.adapter)
        return engine

    @classmethod
    def load_in_background(cls, settings: Any, *, start: bool = True) -> "Engine":
        """An Engine at once; the model loads in a thread and the first use waits for it.

        The web page can be served while torch and transformers import (seconds); a load
        error is raised by the first use of `loaded` (and by `wait_loaded`). With
        start=False the thread starts on `start_loading()` (or on first use): `launch`
        starts it once the server answers, so the imports do not compete with the page's.
        """
        source = str(resolve_model_source(settings.model, settings.home))
        future: concurrent.futures.Future = concurrent.futures.Future()
        engine = cls(future, source=source)

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
            self._switch(self.default_adapter if adapter is KEEP else adapter)
            yield self.model
        finally:
            self.lock.release()

    def acquire(self, adapter: Any = KEEP) -> None:
        """Take the lock and switch adapter, for code that releases it from another thread."""
        if not self.lock.acquire(timeout=self.lock_timeout_s):
            raise BusyError(f"the model has been busy for {self.lock_timeout_s:.0f}s; try again in a moment")
        try:
            self._switch(self.default_adapter if adapter is KEEP else adapter)
        except BaseException:
            self.lock.release()
            raise

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

    # --- internals (called with the lock held) ---
    def _switch(self, path: str | os.PathLike | None) -> None:
        if path is None or str(path) == "":
            if self._peft is not None and self._active is not None:
                self._peft.base_model.disable_adapter_layers()
                logger.info("adapter off: base model")
            self._active = None
            return
        resolved = str(Path(path).expanduser().resolve())
        if resolved == self._active:
            return
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
        self._peft.set_adapter(self._adapters[resolved])
        self._peft.base_model.enable_adapter_layers()
        self._active = resolved
        logger.info("adapter on: %s", resolved)

    def _load_adapter(self, resolved: str) -> None:
        if resolved in self._adapters:
            return
        from peft import PeftModel

        name = f"a{len(self._adapters)}"
        if self._peft is None:
            # Wraps the model and injects LoRA layers into it in place; self.model stays
            # the same object, so generate() on it goes through the adapter.
            self._peft = PeftModel.from_pretrained(self.loaded.model, resolved, adapter_name=name)
        else:
            self._peft.load_adapter(resolved, adapter_name=name)
        self._peft.eval()
        self._adapters[resolved] = name


def _load_from_settings(settings: Any, source: str) -> LoadedModel:
    return load_model(
        source,
        quant=settings.quant,
        device=settings.device,
        dtype=settings.dtype,
        attn_implementation=settings.attn_implementation,
        trust_remote_code=settings.trust_remote_code,
    )
