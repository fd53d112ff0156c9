"""Learn section 4 (base versus tuned) on the tiny LLaVA with real LoRA adapters."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitdemo.chat import conversation
from vitdemo.core.engine import KEEP, Engine
from vitdemo.core.loading import load_model
from vitdemo.learn.compare import compare_adapter

from adapters import save_lora

GEN = conversation.GenerationSettings(max_new_tokens=8)


def _answer(engine: Engine, image: Image.Image, adapter: object) -> str:
    conv = [conversation.user_message("What is red?", n_images=1)]
    return conversation.answer(engine, conv, [image], GEN, adapter=adapter)


def test_comparison_leaves_the_server_default_alone(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """User A answers with their adapter, user B compares with another: users on the server
    default still get the base model (the comparison used to make A's adapter everyone's)."""
    engine = Engine(load_model(tiny_llava_dir))
    image = Image.new("RGB", (48, 40), "red")
    a = str(save_lora(tiny_llava_dir, tmp_path / "a", seed=1))
    b = str(save_lora(tiny_llava_dir, tmp_path / "b", seed=2))
    base = _answer(engine, image, KEEP)
    assert _answer(engine, image, a) != base  # user A, their own adapter (left switched on)
    result = compare_adapter(engine, image, "What is red?", b)  # user B, Learn section 4
    assert result.base_map.shape == result.tuned_map.shape
    assert engine.default_adapter is None
    assert _answer(engine, image, KEEP) == base  # everyone else: still the base model
