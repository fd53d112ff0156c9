"""The app serves its page while the model loads in a background thread."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vitdemo.paths import REPO_ROOT

import pytest
from PIL import Image

from vitdemo.chat import conversation
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.errors import ModelLoadError
from webapp import free_port

ROOT = REPO_ROOT


def test_background_engine_answers_once_loaded(tiny_llava_dir: Path, tmp_path: Path) -> None:
    engine = Engine.load_in_background(Settings(model=str(tiny_llava_dir), home=tmp_path))
    assert engine.source == str(tiny_llava_dir)  # known before the load ends: the header shows it
    conv = [conversation.user_message("What is red?", 1)]
    answer = conversation.answer(engine, conv, [Image.new("RGB", (32, 32), "red")],
                         conversation.GenerationSettings(max_new_tokens=4))  # waits for the load
    assert engine.is_loaded and answer.strip()
    assert engine.wait_loaded().source == str(tiny_llava_dir)


def test_background_load_error_reaches_the_first_user(tmp_path: Path) -> None:
    engine = Engine.load_in_background(Settings(model=str(tmp_path / "no-model-here"), home=tmp_path))
    with pytest.raises(ModelLoadError):
        engine.wait_loaded()
    with pytest.raises(ModelLoadError):  # every later use says the same, nothing hangs
        _ = engine.model


def test_app_with_a_model_that_cannot_load_exits_with_one_error_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VITDEMO_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "app.py", "--model", str(tmp_path / "missing"), "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "missing" in lines[-1], proc.stderr[-2000:]


@pytest.mark.browser
def test_page_header_fills_in_once_the_model_is_loaded(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """The page is served before the model is there; its header then names device and quantization."""
    from playwright.sync_api import expect

    from webapp import browser_page, serve

    settings = Settings(model=str(tiny_llava_dir), home=tmp_path, port=free_port())
    with serve(settings) as url, browser_page() as page:
        page.goto(url, wait_until="load")
        expect(page.get_by_text("quantization")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("(loading...)")).to_have_count(0)


def test_deferred_load_starts_on_request_or_on_first_use(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """`python app.py` defers the load until the server answers; a first use starts it too."""
    engine = Engine.load_in_background(Settings(model=str(tiny_llava_dir), home=tmp_path), start=False)
    time.sleep(0.5)
    assert not engine.is_loaded  # nothing started on its own
    assert engine.model is not None  # first use starts the load and waits for it
    assert engine.is_loaded
    engine.start_loading()  # later calls are harmless
    assert engine.wait_loaded().source == str(tiny_llava_dir)


def test_building_the_page_imports_neither_torch_nor_matplotlib() -> None:
    """The tabs import torch (and matplotlib) only when they compute: the page is served sooner."""
    code = ("import sys; from vitdemo.ui import app; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
