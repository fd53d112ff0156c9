"""Browser test of the Fine-tune tab in the whole app: upload the example zip, check, start,
watch the curve, see before/after answers, ask the tuned model, chat with it in the Chat
tab while another browser session still gets the base model. Screenshots go to
tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

from vitdemo.paths import REPO_ROOT

import pytest

from webapp import upload_file, CHROMIUM, CHROMIUM_ARGS, free_port, serve

from ft_helpers import confident_head

pytestmark = pytest.mark.browser

ROOT = REPO_ROOT
EXAMPLE_ZIP = ROOT / "assets" / "datasets" / "chinese_colors.zip"


@pytest.fixture()
def learnable_tiny(tiny_llava_dir: Path, tmp_path: Path) -> Path:
    """The tiny LLaVA with a trained-size output layer and no suppressed tokens (so it can learn
    to say 红色 quickly); saved, because the job's own process loads it from disk."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = confident_head(AutoModelForImageTextToText.from_pretrained(tiny_llava_dir))
    model.generation_config.suppress_tokens = None
    out = tmp_path / "learnable_tiny"
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_llava_dir).save_pretrained(out)
    return out


@pytest.fixture()
def finetune_app(learnable_tiny: Path, tmp_path: Path, monkeypatch):
    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    monkeypatch.setenv("VITDEMO_TRAIN_THREADS", "1")
    settings = Settings(model=str(learnable_tiny), home=tmp_path / "home", device="cpu", quant="none",
                        port=free_port(), max_new_tokens=8)
    engine = Engine(load_model(str(learnable_tiny), device="cpu", quant="none"))
    with serve(settings, engine) as url:
        yield url, settings


def _ask_in_chat(page, image: Path, question: str) -> str:
    """Send image + question from the Chat tab; the answer once streaming has ended."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Chat").click()
    box = page.locator("#vitdemo-input")
    box.locator("input[type=file]").set_input_files(str(image))
    expect(box.locator("img")).to_have_count(1, timeout=30_000)
    box.locator("textarea").fill(question)
    box.locator("textarea").press("Enter")
    bot = page.locator("#vitdemo-chatbot .bot")
    expect(bot.last).to_be_visible(timeout=60_000)
    expect(box.locator("textarea")).to_be_enabled(timeout=60_000)  # streaming has ended
    return bot.last.inner_text().strip()


def test_upload_check_train_compare_and_ask(finetune_app, artifacts_dir: Path, tmp_path: Path) -> None:
    assert EXAMPLE_ZIP.is_file(), "run scripts/make_example_datasets.py"
    url, settings = finetune_app
    import zipfile

    with zipfile.ZipFile(EXAMPLE_ZIP) as zf:  # one of the example images, for the "try" box
        (tmp_path / "try.jpg").write_bytes(zf.read("chinese_colors/images/0003.jpg"))
    from playwright.sync_api import expect, sync_playwright

    question = "What color is the circle? Answer in Chinese."
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(url, wait_until="load")
        page.get_by_role("tab", name="Fine-tune").click()
        upload_file(page, "ft-files", EXAMPLE_ZIP)
        page.locator("#ft-check").click()
        page.get_by_text("Ready to train.").wait_for(timeout=60_000)
        report = page.locator("#ft-report").inner_text()
        assert "300" in report and "llava" in report
        assert page.locator("#ft-gallery img").count() >= 6
        page.screenshot(path=str(artifacts_dir / "finetune_1_checked.png"), full_page=True)

        page.locator("#ft-start").click()
        page.get_by_text("Running:").first.wait_for(timeout=60_000)
        page.get_by_text("Done:").first.wait_for(timeout=300_000)
        page.locator("#ft-plot canvas, #ft-plot svg").first.wait_for(timeout=30_000)
        page.locator("#ft-results").get_by_text("exact match").wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "finetune_2_done.png"), full_page=True)
        answers = page.locator("#ft-answers").inner_text()
        assert answers.count("色") >= 10, answers  # tuned answers in Chinese

        page.locator("#ft-try-image input[type=file]").set_input_files(str(tmp_path / "try.jpg"))
        page.locator("#ft-try-image img").first.wait_for(timeout=20_000)
        page.locator("#ft-try-q textarea").fill(question)
        page.locator("#ft-try").click()
        tuned = page.locator("#ft-try-tuned textarea")
        page.wait_for_function("() => document.querySelector('#ft-try-tuned textarea').value.length > 0",
                               timeout=60_000)
        assert tuned.input_value().endswith("色"), tuned.input_value()
        page.locator("#ft-try-tuned").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "finetune_3_try.png"), full_page=True)

        # "Chat with this adapter": this browser's Chat tab answers with it; another
        # browser session (a second user) still talks to the base model.
        page.locator("#ft-use").click()
        tuned_chat = _ask_in_chat(page, tmp_path / "try.jpg", question)
        assert tuned_chat.endswith("色"), tuned_chat
        expect(page.locator("#vitdemo-answering")).to_contain_text("fine-tuned adapter")
        page.screenshot(path=str(artifacts_dir / "finetune_4_chat_tuned.png"), full_page=True)
        other = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
        other.goto(url, wait_until="load")
        other_chat = _ask_in_chat(other, tmp_path / "try.jpg", question)
        assert other_chat != tuned_chat and not other_chat.endswith("色"), other_chat
        expect(other.locator("#vitdemo-answering")).not_to_contain_text("adapter")
        # Back to the base model, in the first session.
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#ft-base").click()
        page.get_by_role("tab", name="Chat").click()
        page.locator("#vitdemo-clear").click()
        again = tmp_path / "try-again.jpg"  # a new name: the browser ignores the same file twice
        again.write_bytes((tmp_path / "try.jpg").read_bytes())
        assert _ask_in_chat(page, again, question) == other_chat
        browser.close()
    jobs = list((settings.home / "jobs").iterdir())
    assert any((j / "adapter" / "adapter_config.json").is_file() for j in jobs)
