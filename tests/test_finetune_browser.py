"""Browser test of the Fine-tune tab: upload the example zip, check, start, watch the curve,
see before/after answers, ask the tuned model. Screenshots go to tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp import browser_page, serve_tab

from ft_helpers import confident_head

ROOT = Path(__file__).resolve().parent.parent
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
    from vitdemo.engine import Engine
    from vitdemo.models.loading import load_model
    from vitdemo.ui.finetune import create_finetune_tab

    monkeypatch.setenv("VITDEMO_TRAIN_THREADS", "1")
    settings = Settings(model=str(learnable_tiny), home=tmp_path / "home", device="cpu", quant="none")
    engine = Engine(load_model(str(learnable_tiny), device="cpu", quant="none"))
    with serve_tab(create_finetune_tab, engine, settings, "Fine-tune") as url:
        yield url, settings


def test_upload_check_train_compare_and_ask(finetune_app, artifacts_dir: Path, tmp_path: Path) -> None:
    assert EXAMPLE_ZIP.is_file(), "run scripts/make_example_datasets.py"
    url, settings = finetune_app
    import zipfile

    with zipfile.ZipFile(EXAMPLE_ZIP) as zf:  # one of the example images, for the "try" box
        (tmp_path / "try.jpg").write_bytes(zf.read("chinese_colors/images/0003.jpg"))
    with browser_page(1400, 1300) as page:
        page.goto(url)
        page.locator("#ft-files input[type=file]").set_input_files(str(EXAMPLE_ZIP))
        page.locator("#ft-files").get_by_text("chinese_colors.zip").first.wait_for(timeout=30_000)
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
        page.locator("#ft-try-q textarea").fill("What color is the circle? Answer in Chinese.")
        page.locator("#ft-try").click()
        tuned = page.locator("#ft-try-tuned textarea")
        page.wait_for_function("() => document.querySelector('#ft-try-tuned textarea').value.length > 0",
                               timeout=60_000)
        assert tuned.input_value().endswith("色"), tuned.input_value()
        page.locator("#ft-try-tuned").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "finetune_3_try.png"), full_page=True)
    jobs = list((settings.home / "jobs").iterdir())
    assert any((j / "adapter" / "adapter_config.json").is_file() for j in jobs)
