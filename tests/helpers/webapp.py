"""Shared helpers for tests that run the real app: a server on a free port, a real browser."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium; never `playwright install`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(settings: Any, engine: Any = None) -> Iterator[str]:
    """build_ui(settings, engine) served on settings.port; yields the page URL."""
    from vitdemo.ui.app import build_ui, launch

    demo = build_ui(settings, engine)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def serve_tab(create_tab: Callable[[Any, Any], Any], engine: Any, settings: Any, label: str) -> Iterator[str]:
    """One tab alone in a Blocks app, queued and served on a free port; yields the page URL."""
    import gradio as gr

    with gr.Blocks() as demo:
        with gr.Tab(label):
            create_tab(engine, settings)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        ssr_mode=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


UPLOAD_ATTEMPTS = 2
RETRY_LOG = "upload-retries.log"  # in tests/artifacts/: every attempt whose file was not listed


# The box names a finished file in two spans (stem, extension), so its whole name as text is
# only seen while the upload runs; the file's cell carries it whole as its aria-label.
LISTED_COUNT_JS = """([box, name]) => Array.from(document.querySelectorAll(`#${box} td.filename`))
    .filter(td => td.getAttribute('aria-label') === name).length"""
UPLOADED_JS = """([box, name, before]) => {
  const el = document.getElementById(box);
  const listed = Array.from(el.querySelectorAll('td.filename')).filter(td => td.getAttribute('aria-label') === name);
  return listed.length > before && !el.querySelector('.uploading');
}"""


def upload_file(page: Any, box: str, path: Any, wait_ms: int = 45_000) -> None:
    """Put `path` into the file box `#box` (one that takes several files: each upload adds to its
    list) and wait until the box lists one more copy of it and no upload runs. An upload
    whose file is not listed is made once more; each such miss is written down with what the
    page sent and got back, a screenshot beside it (tests/artifacts/), and the error says the
    same when no attempt is listed."""
    name = str(path).rsplit("/", 1)[-1]
    seen: list[str] = []  # the page's upload traffic, failed requests and console errors, in order

    def note(text: str) -> None:
        seen.append(f"{time.strftime('%H:%M:%S')} {text}")

    def on_request(req: Any) -> None:
        if "/upload" in req.url:
            note(f"-> {req.method} {req.url.split('/gradio_api', 1)[-1]}")

    def on_response(resp: Any) -> None:
        if "/upload" in resp.url:
            note(f"<- {resp.status} {resp.url.split('/gradio_api', 1)[-1]}")

    def on_failed(req: Any) -> None:
        note(f"failed {req.method} {req.url.split('/gradio_api', 1)[-1]}: {req.failure}")

    def on_console(msg: Any) -> None:
        if msg.type in ("error", "warning"):
            note(f"console {msg.type}: {msg.text[:300]}")

    handlers = {"request": on_request, "response": on_response, "requestfailed": on_failed, "console": on_console}
    for event, handler in handlers.items():
        page.on(event, handler)
    try:
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            note(f"set_input_files, attempt {attempt}")
            before = page.evaluate(LISTED_COUNT_JS, [box, name])
            page.locator(f"#{box} input[type=file]").set_input_files(str(path))
            try:
                page.wait_for_function(UPLOADED_JS, arg=[box, name, before], timeout=wait_ms)
                return
            except Exception:  # noqa: BLE001 - playwright's TimeoutError: record it, try again
                shown = page.locator(f"#{box}").inner_text(timeout=5000)
                toasts = page.locator(".toast-body").all_inner_texts()
                tabs = page.locator("[role=tab][aria-selected=true]").all_inner_texts()
                what = (f"the file box #{box} did not list {name} in {wait_ms / 1000:.0f} s (attempt {attempt}); "
                        f"box visible: {page.locator(f'#{box}').is_visible()}; it shows {shown!r}; "
                        f"selected tabs: {tabs}; toasts: {toasts}; traffic: " + " | ".join(seen))
                _record_retry(page, box, attempt, what)
                if attempt == UPLOAD_ATTEMPTS:
                    raise AssertionError(what) from None
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)


def _record_retry(page: Any, box: str, attempt: int, what: str) -> None:
    folder = Path(__file__).resolve().parents[1] / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / RETRY_LOG, "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n")
    page.screenshot(path=str(folder / f"upload-retry-{box}-{attempt}.png"), full_page=True)
