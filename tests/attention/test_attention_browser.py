"""Browser test of the attention tab: ask, click a word, see the overlay change."""

from __future__ import annotations

import time
from pathlib import Path

from vitdemo.paths import REPO_ROOT

import pytest

from webapp import browser_page, serve_tab

pytestmark = pytest.mark.browser

ROOT = REPO_ROOT
CLASSROOM = ROOT / "assets" / "classroom"


@pytest.fixture()
def attention_app(tiny_llava_dir):
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model
    from vitdemo.ui.attention import create_attention_tab

    # The classroom model when it ships (its maps differ clearly per word), else tiny LLaVA.
    source = CLASSROOM if (CLASSROOM / "config.json").is_file() else tiny_llava_dir
    engine = Engine(load_model(str(source), device="cpu"))
    with serve_tab(create_attention_tab, engine, None, "How it sees") as url:
        yield url


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
    image_path = _scene_png(tmp_path / "scene.png")
    with browser_page(1300, 1100) as page:
        page.goto(attention_app)
        page.locator("#attn-image input[type=file]").set_input_files(str(image_path))
        page.locator("#attn-image img").first.wait_for(timeout=20_000)
        page.locator("#attn-question textarea").fill("What color is the circle?")
        page.locator("#attn-ask").click()
        page.get_by_text("Done. Click a word").wait_for(timeout=60_000)
        overlay = page.locator("#attn-overlay img").first
        overlay.wait_for(timeout=20_000)
        answer_tokens = page.locator("#attn-answer .token")
        question_tokens = page.locator("#attn-prompt .token")
        assert answer_tokens.count() >= 1 and question_tokens.count() >= 3
        page.screenshot(path=str(artifacts_dir / "attention_after_answer.png"), full_page=True)
        caption = page.locator("#attn-caption")

        def click_and_wait(token, expected_caption: str, name: str) -> None:
            before_src, before_caption = overlay.get_attribute("src"), caption.inner_text()
            token.click()
            deadline = time.time() + 20
            while time.time() < deadline and (caption.inner_text() == before_caption
                                              or overlay.get_attribute("src") == before_src):
                time.sleep(0.2)
            page.screenshot(path=str(artifacts_dir / f"attention_{name}.png"), full_page=True)
            assert expected_caption in caption.inner_text(), caption.inner_text()
            assert overlay.get_attribute("src") != before_src, f"the overlay did not change ({name})"

        # A word of the question ("circle" when the tokenizer keeps it whole), then the
        # first word of the answer: each click must redraw the overlay.
        texts = [question_tokens.nth(i).inner_text().strip() for i in range(question_tokens.count())]
        pick = texts.index("circle") if "circle" in texts else len(texts) // 2
        # (newline tokens are drawn as line breaks, so DOM and token indices may differ)
        click_and_wait(question_tokens.nth(pick), f"{texts[pick]}'" if "circle" in texts else "question token",
                       "question_word")
        assert "question token" in caption.inner_text()
        click_and_wait(answer_tokens.nth(0), "answer token 0", "answer_word")
