"""The tiny test models load back through the Auto classes and stay tiny and seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _size_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.mark.parametrize("fixture", ["tiny_llava_dir", "tiny_idefics3_dir", "tiny_qwen2vl_dir"])
def test_tiny_model_is_small_and_loadable(fixture: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder: Path = request.getfixturevalue(fixture)
    size = _size_bytes(folder)
    assert size < 2 * 1024 * 1024, f"{fixture} is {size} bytes, over the 2 MB budget"
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.chat_template, f"{fixture} has no chat template"
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id


def test_builders_are_seeded(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    import tiny_models

    a = load_file(tiny_models.build_tiny_llava(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(tiny_models.build_tiny_llava(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(tiny_models.build_tiny_llava(tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed must give the same weights"
    assert any(not torch.equal(a[k], c[k]) for k in a), "different seeds must differ"
