"""Real PEFT (LoRA) adapters for the tiny test models, saved as the fine-tune jobs save them."""

from __future__ import annotations

from pathlib import Path


def save_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter of the model in `base_dir` that visibly changes its outputs; returns `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter actually change outputs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    return out
