"""GPU check: build a tiny LLaVA, load it 4-bit (NF4, double quant, bf16 compute) on CUDA,
chat with it, then run a short QLoRA fine-tune of the classroom model loaded 4-bit on the
shipped example dataset; print one JSON object of figures. No network needed.
(CI has no GPU: these checks live here, not in the pytest suite, so that nothing skips.)

    python scripts/gpu_check.py [--quant 4bit] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def qlora_check(quant: str, steps: int = 30) -> dict:
    """LoRA on the 4-bit classroom model (QLoRA): the loss must fall and the adapter save."""
    import torch

    from vitdemo.finetune.data.records import load_dataset
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.trainer import Trainer, is_quantized, make_items, split_records
    from vitdemo.core.loading import load_model

    root = Path(__file__).resolve().parent.parent
    loaded = load_model(str(root / "assets" / "classroom"), quant=quant, device="cuda")
    out = Path(tempfile.mkdtemp())
    records = load_dataset(root / "assets" / "datasets" / "chinese_colors.zip",
                           extract_to=out / "data").usable_records()
    train, held_out = split_records(records, 0.1, seed=0)
    cfg = FinetuneConfig(max_steps=steps, checkpoint_every=0)
    t = time.perf_counter()
    trainer = Trainer(loaded.model, loaded.processor, make_items(loaded.processor, train),
                      make_items(loaded.processor, held_out), cfg, out)
    trainer.train()
    seconds = time.perf_counter() - t
    trainer.save_adapter(out / "adapter")
    losses = trainer.state.losses
    first, last = float(sum(losses[:5]) / 5), float(sum(losses[-5:]) / 5)
    return {"quantized": is_quantized(loaded.model), "steps": len(losses), "seconds": round(seconds, 2),
            "loss_first5": round(first, 4), "loss_last5": round(last, 4),
            "adapter_saved": (out / "adapter" / "adapter_model.safetensors").is_file(),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "ok": bool(is_quantized(loaded.model) and last < first
                       and (out / "adapter" / "adapter_model.safetensors").is_file())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="4bit", choices=("4bit", "8bit", "none"))
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    report: dict = {"ok": False}
    try:
        import torch
        from PIL import Image

        from vitdemo.chat import conversation
        from vitdemo.config import setup_logging
        from vitdemo.core.engine import Engine
        from vitdemo.core.fallback import build_tiny_llava
        from vitdemo.core.loading import load_model

        setup_logging()
        report.update(torch=torch.__version__, cuda_available=torch.cuda.is_available())
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU visible to torch")
        report["gpu"] = torch.cuda.get_device_name(0)
        import bitsandbytes
        import transformers

        report.update(bitsandbytes=bitsandbytes.__version__, transformers=transformers.__version__)
        folder = build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny", seed=0)
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        loaded = load_model(folder, quant=args.quant, device="cuda")
        report["load_s"] = round(time.perf_counter() - t, 3)
        kinds: dict[str, int] = {}
        for name, module in loaded.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                part = "vision" if ("vision_tower" in name or "projector" in name) else "language"
                key = f"{part}:{type(module).__name__}"
                kinds[key] = kinds.get(key, 0) + 1
        qconf = getattr(loaded.model.config, "quantization_config", None)
        qconf = qconf if isinstance(qconf, dict) or qconf is None else qconf.to_dict()
        report.update(quant=loaded.quantized, dtype=loaded.dtype, device=loaded.device, linear_kinds=kinds,
                      nf4=(qconf or {}).get("bnb_4bit_quant_type"),
                      double_quant=(qconf or {}).get("bnb_4bit_use_double_quant"),
                      param_device=str(next(loaded.model.parameters()).device))
        engine = Engine(loaded)
        loaded.model.generation_config.min_new_tokens = args.tokens
        image = Image.new("RGB", (64, 64), "red")
        conv = [conversation.user_message("What colour is the image?", 1)]
        gen = conversation.GenerationSettings(max_new_tokens=args.tokens)
        conversation.answer(engine, conv, [image], gen)  # warm-up (CUDA kernels)
        stats = conversation.AnswerStats()
        answer = "".join(conversation.stream_answer(engine, conv, [image], gen, stats=stats))
        again = conversation.answer(engine, conv, [image], gen)
        report.update(
            answer=answer.strip(), greedy_repeatable=(again == answer.strip()),
            new_tokens=stats.new_tokens, first_token_ms=round(1000 * (stats.first_token_s or 0), 2),
            tokens_per_s=round(stats.new_tokens / stats.total_s, 1),
            peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1),
        )
        report["ok"] = bool(answer.strip()) and stats.new_tokens == args.tokens and loaded.device == "cuda"
        report["qlora"] = qlora_check(args.quant)
        report["ok"] = report["ok"] and report["qlora"]["ok"]
    except Exception as err:  # noqa: BLE001 - reported in the JSON
        report["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
