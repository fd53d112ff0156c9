"""Helpers for the reliability tests: raw Gradio HTTP calls (queue join + SSE), uploads,
and spies that count what the model does. Used by tests/test_security.py,
tests/test_limits.py and tests/test_faults.py, and by bench/load.py and bench/soak.py.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
from PIL import Image

# Distinct solid-colour scenes: a mix-up between users shows as a wrong answer.
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "magenta")


def scene(path: Path, colour: str, size: int = 64, shape_box: tuple[int, int, int, int] | None = None) -> str:
    """A small PNG: a coloured square on white (or a plain colour) at `path`."""
    img = Image.new("RGB", (size, size), "white" if shape_box else colour)
    if shape_box:
        img.paste(Image.new("RGB", (shape_box[2] - shape_box[0], shape_box[3] - shape_box[1]), colour),
                  shape_box[:2])
    img.save(path)
    return str(path)


def fn_index(url: str, name: str) -> int:
    """The dependency id of the event whose api_name (or function name) is `name`."""
    config = httpx.get(url + "config", timeout=30).json()
    for dep in config["dependencies"]:
        if dep.get("api_name") == name:
            return int(dep["id"])
    raise KeyError(f"no event named {name!r}")


def page_client(url: str, **kwargs: Any) -> Any:
    """A gradio_client Client that may also call the page's own events by name (/on_ask, ...).

    The app turns API visibility off for every event but its documented endpoints, so a
    plain Client refuses them; the browser still calls them through the same queue, and
    this client does what the browser does, for tests and benchmarks of those handlers.
    """
    from gradio_client import Client

    client = Client(url, verbose=False, **kwargs)
    for dep in client.config["dependencies"]:
        if dep.get("api_visibility") == "private" and dep.get("backend_fn"):
            dep["api_visibility"] = "undocumented"
    values = {c["id"]: c.get("props", {}).get("value") for c in client.config["components"]}
    deps = {d.get("id", i): d for i, d in enumerate(client.config["dependencies"])}
    for endpoint in client.endpoints.values():
        if endpoint.backend_fn and not endpoint.is_valid:
            endpoint.is_valid = True
            # The API page describes no parameters of a private event: take each input's
            # value on the page as its default, as the browser would send it.
            inputs = deps[endpoint.fn_index]["inputs"]
            endpoint.parameters_info = [
                {"parameter_name": f"input_{i}", "parameter_has_default": True, "parameter_default": values.get(cid)}
                for i, (cid, kind) in enumerate(zip(inputs, endpoint.input_component_types))
                if not (kind.skip or kind.is_state)]
    return client


def upload(url: str, path: str | Path, mime: str = "image/png", data: bytes | None = None,
           cookies: Any = None) -> dict[str, Any]:
    """POST a file to the upload route; returns the FileData payload to put in `data`."""
    path = Path(path)
    body = data if data is not None else path.read_bytes()
    r = httpx.post(url + "gradio_api/upload", files={"files": (path.name, body, mime)}, timeout=60, cookies=cookies)
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def file_data(path: str) -> dict[str, Any]:
    """A FileData payload naming `path` as if it had been uploaded (for forged-path tests)."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}


@contextlib.contextmanager
def sse(url: str, fn: int, data: list[Any], session_hash: str | None = None,
        timeout: float = 120.0) -> Iterator[Iterator[dict[str, Any]]]:
    """Join the queue for event `fn` and yield an iterator of its SSE messages (dicts).

    Leaving the `with` block closes the HTTP stream: that is a client disconnecting.
    """
    session_hash = session_hash or secrets.token_hex(6)
    join = httpx.post(url + "gradio_api/queue/join", timeout=30, json={
        "data": data, "fn_index": fn, "session_hash": session_hash, "event_data": None, "trigger_id": None})
    if join.status_code != 200:
        yield iter([{"msg": "join_refused", "status": join.status_code, "text": join.text}])
        return
    with httpx.stream("GET", url + f"gradio_api/queue/data?session_hash={session_hash}", timeout=timeout) as st:
        def messages() -> Iterator[dict[str, Any]]:
            for line in st.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    yield msg
                    if msg.get("msg") == "process_completed":
                        return
        yield messages()


def call(url: str, fn: int, data: list[Any], session_hash: str | None = None,
         timeout: float = 120.0) -> dict[str, Any]:
    """Run event `fn` to completion; returns the process_completed message (or a refusal)."""
    last: dict[str, Any] = {}
    with sse(url, fn, data, session_hash, timeout) as messages:
        for msg in messages:
            last = msg
    return last


def error_text(msg: dict[str, Any]) -> str | None:
    """The error a completed event shows the user, or None if it succeeded."""
    if msg.get("msg") == "join_refused":
        return f"refused {msg['status']}: {msg['text']}"
    out = msg.get("output") or {}
    if msg.get("success") is False or out.get("error") is not None:
        return str(out.get("error"))
    return None


class ForwardSpy:
    """Wraps model.forward: counts calls and the most forwards ever running at once."""

    def __init__(self, model: Any, delay_s: float = 0.0, fail: Callable[[int], BaseException | None] | None = None):
        self.model = model
        self.inner = model.forward
        self.__wrapped__ = self.inner  # generate() reads forward's signature through this
        self.delay_s = delay_s  # sleep per forward: makes a generation slow enough to race with
        self.fail = fail  # fail(call_number) -> an exception to raise instead, or None
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._mutex = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            self.calls += 1
            n = self.calls
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.fail is not None:
                err = self.fail(n)
                if err is not None:
                    raise err
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.inner(*args, **kwargs)
        finally:
            with self._mutex:
                self.active -= 1

    def __enter__(self) -> "ForwardSpy":
        self.model.forward = self
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.forward  # back to the class's forward


def wait_unlocked(engine: Any, timeout_s: float) -> float | None:
    """Seconds until engine.lock is free (None if still held after timeout_s)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if not engine.lock.locked():
            return time.monotonic() - start
        time.sleep(0.05)
    return None
