"""Browser test of the attention tab: ask, click a word, see the overlay change."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLASSROOM = ROOT / "assets" / "classroom"
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def attention_app(tiny_llava_dir):
    gr = pytest.importorskip("gradio")
    from vitdemo.engine import Engine
    from vitdemo.models.loading import load_model
    from vitdemo.ui.attention import create_attention_tab

    # The classroom model when it ships (its maps differ clearly per word), else tiny LLaVA.
    source = CLASSROOM if (CLASSROOM / "config.json").is_file() else tiny_llava_dir
    engine = Engine(load_model(str(source), device="cpu"))
    with gr.Blocks() as demo:
        with gr.Tab("How it sees"):
            create_attention_tab(engine, None)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        ssr_mode=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def _scene_png(path: Path) -> Path:
    try:
        import numpy as np

        from vitdemo.classroom.scenes import generate_scene

        generate_scene(np.random.default_rng(7), n_objects=3).image.save(path)
    except ImportError:
        from PIL import Image

        Image.new("RGB", (96, 96), (200, 40, 40)).save(path)
    return path


def test_ask_click_word_overlay_changes(attention_app, artifacts_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    image_path = _scene_png(tmp_path / "scene.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(attention_app)
        page.locator("#attn-image input[type=file]").set_input_files(str(image_path))
        page.locator("#attn-image img").first.wait_for(timeout=20_000)
        page.locator("#attn-question textarea").fill("What color is the circle?")
        page.locator("#attn-ask").click()
        page.get_by_text("Done. Click a word").wait_for(timeout=60_000)
        overlay = page.locator("#attn-overlay img").first
        overlay.wait_for(timeout=20_000)
        tokens = page.locator("#attn-answer .token")
        assert tokens.count() >= 2, f"expected at least 2 answer tokens, got {tokens.count()}"
        page.screenshot(path=str(artifacts_dir / "attention_after_answer.png"), full_page=True)
        before_src = overlay.get_attribute("src")
        before_caption = page.locator("#attn-caption").inner_text()
        tokens.nth(0).click()
        deadline = time.time() + 20
        while time.time() < deadline and page.locator("#attn-caption").inner_text() == before_caption:
            time.sleep(0.2)
        after_caption = page.locator("#attn-caption").inner_text()
        assert after_caption != before_caption and "answer token 0" in after_caption
        deadline = time.time() + 20
        while time.time() < deadline and overlay.get_attribute("src") == before_src:
            time.sleep(0.2)
        page.screenshot(path=str(artifacts_dir / "attention_after_click.png"), full_page=True)
        assert overlay.get_attribute("src") != before_src, "the overlay did not change after clicking a word"
        browser.close()
