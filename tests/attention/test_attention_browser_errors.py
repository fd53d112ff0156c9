"""The Attention tab in Chromium when the user makes a mistake or presses Stop (issue 18):
warnings, not "Error" over every output; the earlier answer stays; no traceback; Stop ends
with "Stopped", not "Answering..."."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webapp import browser_page, serve_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def tiny_app(tiny_llava_dir):
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model
    from vitdemo.ui.attention import create_attention_tab

    engine = Engine(load_model(str(tiny_llava_dir), device="cpu"))
    with serve_tab(create_attention_tab, engine, None, "How it sees") as url:
        yield url, engine


def _wait_for_toast(page, text: str) -> None:
    page.get_by_text(text).first.wait_for(timeout=30_000)


def _no_error_badges(page) -> None:
    assert page.get_by_text("Error", exact=True).count() == 0, "an output shows an Error badge"


def test_mistakes_are_warnings_and_stop_says_stopped(tiny_app, artifacts_dir, tmp_path, capfd, monkeypatch):
    url, engine = tiny_app
    picture = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is a text file, renamed .png")
    with browser_page(1300, 1200) as page:
        page.goto(url)
        page.locator("#attn-image input[type=file]").set_input_files(str(picture))
        page.locator("#attn-image img").first.wait_for(timeout=20_000)
        slider = page.get_by_label("number input for Max new tokens")
        slider.fill("6")  # a short random answer: this part is about mistakes
        slider.press("Tab")
        question = page.locator("#attn-question textarea")
        question.fill("what is here?")
        page.locator("#attn-ask").click()
        page.get_by_text("Done. Click a word").wait_for(timeout=90_000)
        overlay = page.locator("#attn-overlay img").first
        overlay.wait_for(timeout=20_000)
        before_src = overlay.get_attribute("src")
        before_answer = page.locator("#attn-answer").inner_text()

        def still_there() -> None:
            time.sleep(1.0)  # the skipped update would have arrived by now
            _no_error_badges(page)
            assert overlay.get_attribute("src") == before_src, "the earlier map was replaced"
            assert page.locator("#attn-answer").inner_text() == before_answer
            assert "Done. Click a word" in page.locator("#attn-status").inner_text()

        # 1. An empty question.
        question.fill("")
        page.locator("#attn-ask").click()
        _wait_for_toast(page, "Type a question.")
        still_there()
        # 2. A question longer than the model reads (Chat's check and message).
        question.fill("red " * 700)
        page.locator("#attn-ask").click()
        _wait_for_toast(page, "the question is too long")
        still_there()
        page.screenshot(path=str(artifacts_dir / "attention_too_long.png"), full_page=True)
        # 3. A text file renamed .png.
        page.locator("#attn-image button[aria-label='Remove Image']").first.click()
        page.locator("#attn-image input[type=file]").set_input_files(str(not_an_image))
        time.sleep(1.5)
        question.fill("what is here?")
        page.locator("#attn-ask").click()
        _wait_for_toast(page, "notes.png")
        still_there()
        assert page.get_by_text("Could not preprocess").count() == 0
        page.screenshot(path=str(artifacts_dir / "attention_not_an_image.png"), full_page=True)

        # 4. Stop: a long answer (slowed down) ends with "Stopped", not "Answering...".
        forward = engine.model.forward

        @functools.wraps(forward)  # generate() reads forward's signature
        def slow_forward(*args, **kwargs):
            time.sleep(0.05)
            return forward(*args, **kwargs)

        monkeypatch.setattr(engine.model, "forward", slow_forward)
        monkeypatch.setattr(engine.model.generation_config, "min_new_tokens", 200)  # no early EOS
        page.locator("#attn-image button[aria-label='Remove Image']").first.click()
        page.locator("#attn-image input[type=file]").set_input_files(str(picture))
        page.locator("#attn-image img").first.wait_for(timeout=20_000)
        slider.fill("200")
        slider.press("Tab")
        page.locator("#attn-ask").click()
        page.get_by_text("Answering").first.wait_for(timeout=60_000)
        time.sleep(1.0)
        page.locator("#attn-stop").click()
        page.get_by_text("Stopped after").wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "attention_stopped.png"), full_page=True)
        assert "Answering" not in page.locator("#attn-status").inner_text()
        assert page.locator("#attn-answer .token").count() < 200
    logs = capfd.readouterr()
    assert "Traceback" not in logs.out + logs.err, (logs.out + logs.err)[-3000:]
