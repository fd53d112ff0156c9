"""Shared helpers for tests that run the real app: a server on a free port, a real browser."""

from __future__ import annotations

import contextlib
import socket
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


def upload_file(page: Any, box: str, path: Any, wait_ms: int = 45_000) -> None:
    """Put `path` into the file box `#box` and wait until the box names it. An upload the page
    dropped (one made while the page was still wiring its events) is made once more."""
    name = str(path).rsplit("/", 1)[-1]
    for attempt in range(2):
        page.locator(f"#{box} input[type=file]").set_input_files(str(path))
        try:
            page.locator(f"#{box}").get_by_text(name).first.wait_for(timeout=wait_ms)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: try the upload once more
            if attempt:
                raise
