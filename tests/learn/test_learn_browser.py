"""The Learn tab in a real browser, on the shipped classroom model: every section renders
numbers that come from the model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vitdemo.paths import CLASSROOM_MODEL_DIR
from vitdemo.config import Settings
from webapp import browser_page, free_port, serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def learn_page(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(model=str(CLASSROOM_MODEL_DIR), port=free_port(), home=tmp_path_factory.mktemp("home"))
    with serve(settings) as url, browser_page(1280, 1000) as page:
        page.goto(url, wait_until="load", timeout=60_000)
        page.get_by_role("tab", name="Learn").click(timeout=60_000)
        yield page


def _shot(page, artifacts_dir: Path, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / f"learn-{name}.png"), full_page=True)


def test_section1_head_walkthrough_shows_the_models_numbers(learn_page, artifacts_dir):
    from playwright.sync_api import expect

    page = learn_page
    page.get_by_role("button", name="Open the head").click()
    check = page.get_by_text(re.compile("recomputed from these Q, K, V"))
    expect(check).to_be_visible(timeout=60_000)
    difference = float(re.search(r"at most ([0-9.e+-]+)", check.inner_text()).group(1))
    assert difference < 1e-4
    expect(page.get_by_text("Strongest keys of the query token")).to_be_visible()
    _shot(page, artifacts_dir, "1-inside")


def test_section2_contrastive_picks_a_caption(learn_page, artifacts_dir):
    from playwright.sync_api import expect

    page = learn_page
    page.get_by_role("button", name="Next >").click()
    page.get_by_role("button", name="Suggest captions").click()
    captions = page.get_by_label("Captions, one per line")
    expect(captions).not_to_have_value("", timeout=60_000)
    texts = [c for c in captions.input_value().splitlines() if c.strip()]
    assert len(texts) >= 2
    page.get_by_role("button", name="Match").click()
    shown = page.get_by_text("The encoders pick")
    expect(shown).to_be_visible(timeout=60_000)
    # Recompute from the contrastive encoders on the same image and captions.
    from PIL import Image
    from transformers import AutoProcessor

    from vitdemo.classroom.report import load_contrastive
    from vitdemo.classroom.zero_shot import match_captions

    image = Image.open(sorted((CLASSROOM_MODEL_DIR / "examples").glob("*.png"))[0]).convert("RGB")
    match = match_captions(load_contrastive(CLASSROOM_MODEL_DIR), AutoProcessor.from_pretrained(CLASSROOM_MODEL_DIR), [image], texts)
    best = match.picked[0]
    assert f"pick {match.captions[best]} (probability {match.probs[0][best]:.2f})" in shown.inner_text()
    _shot(page, artifacts_dir, "2-contrastive")


def test_section3_stages_table_and_curves(learn_page, artifacts_dir):
    from playwright.sync_api import expect

    page = learn_page
    page.get_by_role("button", name="Next >").click()
    page.get_by_role("button", name="Show the stages").click()
    table = page.locator("#learn-stages-table")
    expect(table.get_by_text("alignment").first).to_be_visible(timeout=60_000)
    expect(table.get_by_text("instruction").first).to_be_visible()
    expect(page.get_by_text("Only the projector learns", exact=False)).to_be_visible()
    _shot(page, artifacts_dir, "3-stages")


def test_presentation_mode_and_keyboard_navigation(learn_page, artifacts_dir):
    from playwright.sync_api import expect

    page = learn_page
    page.get_by_label("Presentation mode (big type, arrow keys)").check()
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")  # section 3 -> 4
    page.keyboard.press("ArrowRight")  # 4 -> 5
    expect(page.get_by_role("heading", name="5. Zero-shot and few-shot")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="4. Before and after fine-tuning")).to_be_hidden()
    assert page.evaluate("document.body.classList.contains('vitdemo-present')")
    page.locator("#learn-fewshot-run").click()
    expect(page.get_by_text(re.compile("The examples (did not change|changed) the answer"))).to_be_visible(timeout=60_000)
    _shot(page, artifacts_dir, "5-fewshot")


def test_section4_before_after_with_the_shipped_adapter(learn_page, artifacts_dir):
    from playwright.sync_api import expect

    page = learn_page
    page.get_by_role("radio", name="4. Before and after fine-tuning").check()
    page.locator("#learn-compare-run").click()
    tuned = page.get_by_label("Fine-tuned model answers")
    expect(tuned).not_to_have_value("", timeout=60_000)
    # The shipped adapter answers colour questions in Chinese; the base model in English.
    assert any("\u4e00" <= ch <= "\u9fff" for ch in tuned.input_value()), tuned.input_value()
    base = page.get_by_label("Base model answers").input_value()
    assert base and not any("\u4e00" <= ch <= "\u9fff" for ch in base), base
    expect(page.locator("#learn-compare-diff img")).to_be_visible(timeout=30_000)
    _shot(page, artifacts_dir, "4-before-after")
