"""Fixtures of the chat tests: the tiny LLaVA's engine (once per module) and a red picture."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model


@pytest.fixture(scope="module")
def engine(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.fixture()
def red_png(tmp_path: Path) -> str:
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), "red").save(path)
    return str(path)
