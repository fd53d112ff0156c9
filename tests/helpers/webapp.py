"""Shared helpers for tests that run the real app: a server on a free port, a real browser."""

from __future__ import annotations

import contextlib
import os
import re
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
MISS_LOG = "upload-misses.log"  # in tests/artifacts/: every attempt whose file was not listed

# The box names a finished file in two spans with a space between (stem, extension), so its
# whole name as text is only seen while the upload runs; the file's cell carries it whole as
# its aria-label.
LISTED_COUNT_JS = """([box, name]) => Array.from(document.querySelectorAll(`#${box} td.filename`))
    .filter(td => td.getAttribute('aria-label') === name).length"""
UPLOADED_JS = """([box, name, before]) => {
  const el = document.getElementById(box);
  if (!el) return false;
  const listed = Array.from(el.querySelectorAll('td.filename')).filter(td => td.getAttribute('aria-label') === name);
  return listed.length > before && !el.querySelector('.uploading');
}"""


def upload_file(page: Any, box: str, path: Any, wait_ms: int = 45_000) -> None:
    """Put `path` into the file box `#box` (one that takes several files: each upload adds to its
    list) and wait until the box lists one more copy of it and no upload runs. An upload whose
    file is not listed in time is made once more. Each such miss is written down with what the
    page sent and got back and a screenshot (tests/artifacts/); when no attempt's file is
    listed, the AssertionError carries the last attempt's record."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

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
            try:
                # a box still uploading shows its progress in place of the file input
                page.locator(f"#{box} .uploading").wait_for(state="detached", timeout=wait_ms)
                before = page.evaluate(LISTED_COUNT_JS, [box, name])
                note(f"set_input_files, attempt {attempt}")
                page.locator(f"#{box} input[type=file]").set_input_files(str(path))
                page.wait_for_function(UPLOADED_JS, arg=[box, name, before], timeout=wait_ms)
                return
            except PlaywrightTimeout as err:  # anything else (a closed page, a bad box id) is raised as it is
                what = (f"the file box #{box} did not list {name} in time (attempt {attempt}: "
                        f"{str(err).splitlines()[0]}); " + _page_state(page, box) + "; traffic: " + " | ".join(seen))
                what += _record_miss(page, box, attempt, what)
                if attempt == UPLOAD_ATTEMPTS:
                    raise AssertionError(what) from None
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)


def _page_state(page: Any, box: str) -> str:
    """What the box and the page show, each part read on its own: one that cannot be read is
    said so, and never hides the miss being recorded."""
    parts = {
        "box visible": lambda: page.locator(f"#{box}").is_visible(),
        "it shows": lambda: repr(page.locator(f"#{box}").inner_text(timeout=5000)),
        "selected tabs": lambda: page.locator("[role=tab][aria-selected=true]").all_inner_texts(),
        "toasts": lambda: page.locator(".toast-body").all_inner_texts(),
    }
    shown = []
    for label, read in parts.items():
        try:
            shown.append(f"{label}: {read()}")
        except Exception as err:  # noqa: BLE001 - a part that cannot be read is named, not raised
            shown.append(f"{label}: <unreadable: {type(err).__name__}>")
    return "; ".join(shown)


def _record_miss(page: Any, box: str, attempt: int, what: str) -> str:
    """Append `what` to tests/artifacts/MISS_LOG beside a screenshot named after the test;
    returns where the screenshot is, or why there is none."""
    folder = Path(__file__).resolve().parents[1] / "artifacts"
    test = os.environ.get("PYTEST_CURRENT_TEST", "no-test").split(" ")[0]
    shot = folder / f"upload-miss-{re.sub(r'[^A-Za-z0-9_.-]+', '_', test)}-{box}-{attempt}.png"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True, timeout=10_000)
        where = f"; screenshot: {shot.name}"
    except Exception as err:  # noqa: BLE001 - the miss is what matters; say why there is no picture
        where = f"; no screenshot ({type(err).__name__})"
    try:
        with open(folder / MISS_LOG, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {test}: {what}{where}\n")
    except OSError as err:
        where += f"; not logged ({err})"
    return where
