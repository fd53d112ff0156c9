"""Shared pytest fixtures: no network, tiny models built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Never reach the Hugging Face Hub from tests: a wrong id must fail fast, not time out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests" / "helpers")):
    if p not in sys.path:
        sys.path.insert(0, p)

import pytest  # noqa: E402

import tiny_models  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a saved tiny random LLaVA (seed 0)."""
    return tiny_models.build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a saved tiny random Idefics3 / SmolVLM (seed 0)."""
    return tiny_models.build_tiny_idefics3(tmp_path_factory.mktemp("tiny_idefics3"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a saved tiny random Qwen2-VL (seed 0)."""
    return tiny_models.build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"), seed=0)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """tests/artifacts/ (gitignored): screenshots and other files to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
