"""The Learn tab in Chromium (issue 18): defaults that agree with the default image (one
orange square), section 3 shows the image its table is about, and a text file renamed .png
is a warning that leaves the section's outputs as they were."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vitdemo.config import Settings
from vitdemo.paths import CLASSROOM_MODEL_DIR
from webapp import browser_page, free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (CLASSROOM_MODEL_DIR / "config.json").is_file(),
                                 reason="the classroom model is not shipped here")]


def test_learn_defaults_stage_image_and_bad_file(tmp_path: Path, artifacts_dir: Path, capfd) -> None:
    from playwright.sync_api import expect

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is a text file, renamed .png")
    settings = Settings(model=str(CLASSROOM_MODEL_DIR), port=free_port(), home=tmp_path / "home")
    with serve(settings) as url, browser_page(1280, 1100) as page:
        page.goto(url, wait_until="load", timeout=60_000)
        page.get_by_role("tab", name="Learn").click(timeout=60_000)
        question = page.get_by_label("Question", exact=True).first
        expect(question).to_have_value("What color is the square?", timeout=30_000)
        # Section 1 on the default image: the model's own numbers.
        page.get_by_role("button", name="Open the head").click()
        check = page.get_by_text("recomputed from these Q, K, V")
        expect(check).to_be_visible(timeout=60_000)
        before = check.inner_text()
        # A text file renamed .png: a warning, the walkthrough stays.
        section1 = page.locator("#learn-tab")
        section1.locator("button[aria-label='Remove Image']").first.click()
        section1.locator("input[type=file]").first.set_input_files(str(not_an_image))
        time.sleep(1.5)
        page.get_by_role("button", name="Open the head").click()
        expect(page.get_by_text("notes.png").first).to_be_visible(timeout=30_000)
        time.sleep(1.0)
        assert page.get_by_text("Could not preprocess").count() == 0
        assert page.get_by_text("Error", exact=True).count() == 0, "an output shows an Error badge"
        assert check.inner_text() == before
        page.screenshot(path=str(artifacts_dir / "learn-bad-file.png"), full_page=True)
        # Section 3: the example image beside its table.
        page.get_by_role("button", name="Next >").click()
        page.get_by_role("button", name="Next >").click()
        page.get_by_role("button", name="Show the stages").click()
        expect(page.locator("#learn-stages-table").get_by_text("What color is the square?").first).to_be_visible(
            timeout=60_000)
        expect(page.locator("#learn-stages-image img")).to_have_count(1, timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "learn-3-stage-image.png"), full_page=True)
        # Section 5: the unusual phrasing asks about the square; the worked examples are true of it.
        page.get_by_role("button", name="Next >").click()
        page.get_by_role("button", name="Next >").click()
        expect(page.get_by_label("Question", exact=True).last).to_have_value("Which colour does the square have?")
        examples = page.get_by_label("Worked examples (question => answer)").input_value()
        assert "circle" not in examples and "=> square" in examples, examples
    logs = capfd.readouterr()
    assert "Traceback" not in logs.out + logs.err, (logs.out + logs.err)[-3000:]
