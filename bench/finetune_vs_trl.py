"""vitdemo's LoRA trainer vs TRL's SFTTrainer: same model, data, LoRA, batch, steps, threads.

Each trainer runs in its own fresh process (so peak memory is its own); the figure is
samples/s of the training loop (model already loaded, data already read) and the peak
resident memory (and peak CUDA memory on a GPU) of the process.

    pip install trl            # for this benchmark only; not a requirement of vitdemo
    python bench/finetune_vs_trl.py [--model DIR] [--data ZIP] [--steps 40] [--batch 8] [--threads 1]

Model default: assets/classroom (else a tiny random LLaVA built in a temp folder).
Data default: assets/datasets/chinese_colors.zip. Prints one JSON line per trainer and a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _setup(args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from vitdemo.finetune.data.records import ingest_upload, load_dataset
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.trainer import split_records
    from vitdemo.core.loading import load_model

    loaded = load_model(args.model, device=args.device, quant=args.quant)
    tmp = Path(tempfile.mkdtemp(prefix="vitdemo-bench-"))
    report = load_dataset(ingest_upload([args.data], tmp / "data"))
    # Plain LoRA for both: TRL patches the output layer with a fused loss that cannot wrap
    # peft's trainable token rows (AttributeError: 'TrainableTokensWrapper' has no 'bias').
    cfg = FinetuneConfig(max_steps=args.steps, batch_size=args.batch, lr=2e-3, checkpoint_every=0, eval_fraction=0.1,
                         train_new_tokens=False)
    train, _ = split_records(report.usable_records(), cfg.eval_fraction, cfg.seed)
    return loaded, cfg, train, tmp


def run_vitdemo(args: argparse.Namespace) -> dict:
    from vitdemo.finetune.trainer import Trainer, make_items

    loaded, cfg, train, tmp = _setup(args)
    t0 = time.perf_counter()  # encoding is part of the trainer's work (TRL does it inside its loop)
    items = make_items(loaded.processor, train)
    encode_s = time.perf_counter() - t0
    trainer = Trainer(loaded.model, loaded.processor, items, [], cfg, tmp / "out")
    t0 = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - t0
    return {"trainer": "vitdemo", "steps": trainer.state.step, "loop_s": round(loop_s, 2), "encode_s": round(encode_s, 2),
            "samples_per_s": round(trainer.state.step * cfg.batch_size / (loop_s + encode_s), 2),
            "final_loss": trainer.state.losses[-1]}


def run_trl(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from vitdemo.finetune.trainer import attach_lora
    from vitdemo.core.images import open_image

    loaded, cfg, train, tmp = _setup(args)
    model = attach_lora(loaded.model, cfg)  # the same LoRA (targets, rank, alpha) as vitdemo's trainer
    rows = [{"prompt": [r.messages[0]], "completion": [r.messages[1]], "images": [open_image(r.images[0])]}
            for r in train]
    dataset = Dataset.from_list(rows)
    sft = SFTConfig(
        output_dir=str(tmp / "trl"), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=int(cfg.warmup_ratio * cfg.max_steps), max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay, logging_steps=10, save_strategy="no", report_to=[], seed=cfg.seed,
        use_cpu=args.device == "cpu", bf16=False, fp16=False, max_length=None, dataloader_num_workers=0,
        completion_only_loss=True, gradient_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=sft, train_dataset=dataset, processing_class=loaded.processor)
    t0 = time.perf_counter()
    out = trainer.train()
    loop_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"trainer": "trl.SFTTrainer", "steps": out.global_step, "loop_s": round(loop_s, 2),
            "samples_per_s": round(out.global_step * cfg.batch_size / loop_s, 2),
            "final_loss": losses[-1] if losses else None}


def _child(args: argparse.Namespace) -> None:
    result = run_vitdemo(args) if args.which == "vitdemo" else run_trl(args)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    import torch

    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: assets/classroom, else a tiny LLaVA)")
    parser.add_argument("--data", default=str(ROOT / "assets" / "datasets" / "chinese_colors.zip"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both trainers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quant", default="none")
    parser.add_argument("--which", choices=("vitdemo", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        _child(args)
        return
    if args.model is None:
        classroom = ROOT / "assets" / "classroom"
        if (classroom / "config.json").is_file():
            args.model = str(classroom)
        else:
            from vitdemo.core.fallback import build_tiny_llava

            args.model = str(build_tiny_llava(Path(tempfile.mkdtemp(prefix="vitdemo-tiny-")) / "m"))
    results = []
    for which in ("vitdemo", "trl"):
        cmd = [sys.executable, __file__, "--which", which, "--model", args.model, "--data", args.data,
               "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads),
               "--device", args.device, "--quant", args.quant]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{which} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            sys.exit(1)
        result = json.loads(line[len("RESULT "):])
        results.append(result)
        print(json.dumps(result))
    ratio = results[0]["samples_per_s"] / results[1]["samples_per_s"]
    print(json.dumps({"model": args.model, "steps": args.steps, "batch": args.batch, "threads": args.threads,
                      "speedup_vitdemo_over_trl": round(ratio, 2),
                      "memory_ratio_vitdemo_over_trl": round(results[0]["peak_rss_mb"] / results[1]["peak_rss_mb"], 2)}))


if __name__ == "__main__":
    main()
