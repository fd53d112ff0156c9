"""QLoRA as far as bitsandbytes allows on the CPU: the classroom model loaded 4-bit (NF4,
vision tower and projector kept out of quantization) fine-tunes with LoRA; the loss falls
and the adapter saves. The same run on CUDA is in scripts/gpu_check.py."""

from __future__ import annotations

from pathlib import Path

from vitdemo.paths import REPO_ROOT

import torch

from vitdemo.paths import CLASSROOM_MODEL_DIR
from vitdemo.finetune.data.records import load_dataset
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.trainer import Trainer, is_quantized, make_items, split_records
from vitdemo.core.loading import load_model

DATASET = REPO_ROOT / "assets" / "datasets" / "chinese_colors.zip"


def test_qlora_on_a_4bit_classroom_model_learns(tmp_path: Path) -> None:
    loaded = load_model(str(CLASSROOM_MODEL_DIR), quant="4bit", device="cpu")
    assert is_quantized(loaded.model)
    records = load_dataset(DATASET, extract_to=tmp_path / "data").usable_records()
    train, held_out = split_records(records, 0.1, seed=0)
    trainer = Trainer(loaded.model, loaded.processor, make_items(loaded.processor, train[:64]),
                      make_items(loaded.processor, held_out[:8]), FinetuneConfig(max_steps=10, checkpoint_every=0),
                      tmp_path / "job")
    # Adapter parameters: LoRA matrices and PEFT's trainable rows of new answer tokens.
    frozen = {n: p.detach().clone() for n, p in loaded.model.named_parameters()
              if "lora_" not in n and "trainable_tokens" not in n and p.dtype.is_floating_point}
    trainer.train()
    losses = trainer.state.losses
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    after = dict(loaded.model.named_parameters())
    assert frozen and set(frozen) <= set(after), "the adapter was attached after the snapshot"
    changed = [n for n in frozen if not torch.equal(after[n], frozen[n])]
    assert not changed, f"non-adapter parameters changed: {changed[:5]}"
    trainer.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
