"""`finetune` and `eval` subcommands.

    python -m vitdemo finetune --data data.zip --out runs/ft1 [--epochs 3 --rank 16 --lr 3e-3 --model M] [--json]
    python -m vitdemo finetune --job-dir DIR [--resume]      # run (or resume) a prepared job folder
    python -m vitdemo eval --data data.zip [--adapter runs/ft1/adapter] [--json]

Several processes (GPUs, or CPU processes over gloo): the training loop is driven by
accelerate.Accelerator, so the same entry runs data-parallel under
`accelerate launch --multi_gpu --num_processes N -m vitdemo finetune --data ... --out ...`
(each process trains on its share of every batch, `--batch-size` per process; only the
first process writes files and prints). tests/finetune/test_two_processes.py runs it with
two CPU processes and compares the loss curve with one process at the same global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import their modules when they run
    from vitdemo.config import Settings

logger = logging.getLogger(__name__)

# Flags for the most used FinetuneConfig fields; any other field via --set name=value.
_FLAGS = {
    "epochs": float, "rank": int, "alpha": float, "lr": float, "batch_size": int, "max_steps": int,
    "min_steps": int, "eval_fraction": float, "seed": int, "checkpoint_every": int, "dropout": float,
    "retention_weight": float,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitdemo.config import add_arguments

    ft = subparsers.add_parser("finetune", help="LoRA fine-tune on image-instruction pairs (headless)")
    src = ft.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="zip (images + annotation file), folder or annotation file")
    src.add_argument("--job-dir", dest="job_dir", type=Path, help="run a prepared job folder (the page's runner)")
    ft.add_argument("--out", type=Path, help="output folder for a --data run (created; must be empty)")
    ft.add_argument("--resume", action="store_true", help="with --job-dir: continue from the last checkpoint")
    ft.add_argument("--drop-bad", dest="drop_bad", action="store_true", help="train on the good records only")
    ft.add_argument("--max-tokens", dest="max_tokens", type=int, default=None,
                    help="cut-off in tokens, image tokens included (default: the model's context, at most 2048)")
    ft.add_argument("--train-projector", dest="train_projector", action="store_true",
                    help="also train the vision->text projector (modules_to_save)")
    for name, kind in _FLAGS.items():
        ft.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                        help=f"FinetuneConfig.{name}")
    ft.add_argument("--probe-prompt", dest="probe_prompts", action="append", default=None, metavar="QUESTION",
                    help="a question the tuned model must keep answering as the base does (retention guard; "
                         "repeat for several)")
    ft.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                    help="any other FinetuneConfig field (JSON value), e.g. --set schedule=\"linear\"")
    ft.add_argument("--merge", type=Path, default=None, help="also write base+adapter merged into this folder")
    ft.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_arguments(ft, server=False)
    ft.set_defaults(func=run_finetune)

    ev = subparsers.add_parser("eval", help="exact-match accuracy of the model (+ adapter) on a dataset")
    ev.add_argument("--data", type=Path, required=True, help="zip, folder or annotation file")
    ev.add_argument("--split", choices=("all", "heldout"), default="all",
                    help="all records, or the held-out split a fine-tune with the same seed used")
    ev.add_argument("--eval-fraction", dest="eval_fraction", type=float, default=0.1)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, default=0, help="evaluate at most this many records (0 = all)")
    ev.add_argument("--max-new-tokens", dest="eval_max_new_tokens", type=int, default=32)
    ev.add_argument("--probes", type=int, default=160,
                    help="with --adapter: probe questions for the forgetting report (base answers kept)")
    ev.add_argument("--json", action="store_true")
    add_arguments(ev, server=False)
    ev.set_defaults(func=run_eval)


def _config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from vitdemo.errors import InputError
    from vitdemo.finetune.config import FinetuneConfig

    cfg: dict[str, Any] = {}
    for name in _FLAGS:
        if getattr(args, name, None) is not None:
            cfg[name] = getattr(args, name)
    if args.train_projector:
        cfg["train_projector"] = True
    if args.probe_prompts:
        cfg["probe_prompts"] = args.probe_prompts
    for item in args.overrides:
        name, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r}: write NAME=VALUE")
        try:
            cfg[name.strip()] = json.loads(raw)
        except ValueError:
            cfg[name.strip()] = raw
    return FinetuneConfig.from_dict(cfg).to_dict()  # validates


def _settings(args: argparse.Namespace) -> Settings:
    from vitdemo.config import Settings

    return Settings.from_args(args)


def default_max_tokens(model: Any) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(min(getattr(cfg, "max_position_embeddings", 2048) or 2048, 2048))


def prepare_job_from_data(data: Path, out: Path, loaded: Any, model_source: str, config: dict[str, Any], *,
                          drop_bad: bool, max_tokens: int | None, quant: str, device: str) -> Any:
    """Create the job folder `out` (data/, records.jsonl, job.json) from a dataset path."""
    from vitdemo.finetune.data.records import DataLimits, ingest_upload, load_dataset, save_records
    from vitdemo.errors import DatasetError, InputError
    from vitdemo.finetune.jobs import Job

    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty; choose a new folder")
    job = Job(out)
    job.data_dir.mkdir(parents=True, exist_ok=True)
    limits = DataLimits(max_tokens=max_tokens or default_max_tokens(loaded.model))
    if data.is_file() and data.suffix.lower() == ".zip":
        ingest_upload([data], job.data_dir, limits)
        source = job.data_dir
    else:
        source = data
    report = load_dataset(source, processor=loaded.processor, limits=limits)
    for p in report.all_problems():
        logger.log(logging.WARNING if p.severity == "error" else logging.INFO, "line %s: %s (%s)",
                   p.line if p.line is not None else "-", p.message, p.fix)
    try:
        records = report.usable_records(drop_bad=drop_bad)
    except DatasetError as err:
        first = next((p for p in report.all_problems() if p.severity == "error"), None)
        where = f" First: line {first.line}: {first.message}." if first else ""
        raise DatasetError(f"{err}.{where}") from None
    save_records(records, report, job.records_path)
    job.update(id=job.id, created=__import__("time").time(), status="created", model=model_source, quant=quant,
               device=device, config=config, data=report.summary(), pid=None, error=None, pid_marker="vitdemo")
    return job


def run_finetune(args: argparse.Namespace) -> int:
    from vitdemo.errors import InputError
    from vitdemo.finetune import processes
    from vitdemo.finetune.runner import run_job
    from vitdemo.finetune.jobs import Job
    from vitdemo.core.loading import load_model, resolve_model_source

    settings = _settings(args)
    if args.job_dir is not None:
        job = Job(args.job_dir)
        summary = run_job(job.dir, resume=args.resume)
    else:
        if args.out is None:
            raise InputError("--out is required with --data")
        if args.resume:
            raise InputError("--resume works with --job-dir (the folder of the run to continue)")
        config = _config_from_args(args)
        source = resolve_model_source(settings.model, settings.home)
        loaded = load_model(source, quant=settings.quant, device=settings.device, dtype=settings.dtype)
        if processes.is_main():  # launched data-parallel, the first process writes the job folder
            prepare_job_from_data(args.data, args.out, loaded, source, config, drop_bad=args.drop_bad,
                                  max_tokens=args.max_tokens, quant=settings.quant, device=settings.device)
        processes.wait_for_everyone()
        job = Job(args.out)
        summary = run_job(job.dir, loaded=loaded)
    if not processes.is_main():
        return 0 if summary["status"] in ("completed", "stopped") else 1
    if args.merge is not None and summary.get("adapter"):
        from vitdemo.finetune.trainer import merge_adapter

        data = Job(job.dir).read()
        summary["merged"] = str(merge_adapter(data["model"], summary["adapter"], args.merge))
    if args.json:
        print(json.dumps({"job_dir": str(job.dir), **summary}, ensure_ascii=False))
    else:
        b, a = summary.get("eval_before") or {}, summary.get("eval_after") or {}
        print(f"{summary['status']}: {summary['steps']} steps in {summary['seconds']:.1f}s, train loss "
              f"{summary['train_loss']}, held-out exact match {b.get('exact_match')} -> {a.get('exact_match')}, "
              f"adapter {summary.get('adapter')}")
    return 0 if summary["status"] in ("completed", "stopped") else 1


def run_eval(args: argparse.Namespace) -> int:
    from vitdemo.finetune.data.records import DataLimits, ingest_upload, load_dataset
    from vitdemo.finetune.trainer import make_items, split_records
    from vitdemo.finetune.evaluate import evaluate
    from vitdemo.core.loading import load_model, resolve_model_source

    settings = _settings(args)
    source = resolve_model_source(settings.model, settings.home)
    loaded = load_model(source, quant=settings.quant, device=settings.device, dtype=settings.dtype)
    model = loaded.model
    if settings.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, settings.adapter)
    with tempfile.TemporaryDirectory(prefix="vitdemo-eval-") as tmp:
        data = args.data
        if data.is_file() and data.suffix.lower() == ".zip":
            data = ingest_upload([data], Path(tmp) / "data", DataLimits())
        report = load_dataset(data)
        records = report.usable_records(drop_bad=True)
        if args.split == "heldout":
            _, records = split_records(records, args.eval_fraction, args.seed)
        if args.limit:
            records = records[: args.limit]
        items = make_items(loaded.processor, records, encode=True)
        result = evaluate(model, loaded.processor, items, max_new_tokens=args.eval_max_new_tokens)
        retention = forgetting_report(model, loaded.processor, items, args.probes) if settings.adapter else None
    out = {"model": source, "adapter": settings.adapter, "n": result.n, "exact_match": result.exact_match,
           "loss": result.loss, "skipped_records": len(report.records) - len(report.good), "retention": retention}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"exact match {result.exact_match:.3f} on {result.n} records (loss {result.loss})")
        if retention and retention["n"]:
            print(f"base answers kept: {retention['agreement']:.1%} of {retention['n']} probe questions "
                  f"({retention['probes']})")
    return 0


def forgetting_report(model: Any, processor: Any, items: Any, n_probes: int) -> dict[str, Any]:
    """Agreement of model+adapter with the base model (the adapter disabled) on probe questions
    over the evaluated records' images."""
    from vitdemo.finetune.evaluate import generate_answers
    from vitdemo.finetune.retention import agreement_report, build_probes, is_classroom_model

    classroom = is_classroom_model(model)
    images = [it.images[0] for it in items if len(it.images) == 1]
    with model.disable_adapter():  # the base model: the same weights, no second copy
        probes = build_probes(model, processor, images, classroom=classroom, limit=n_probes, encode=False,
                              exclude=[it.question for it in items])
    after = generate_answers(model, processor, [p.item for p in probes], 48, 32)
    return {**agreement_report(probes, after), "probes": "classroom question forms" if classroom else "generic prompts"}


if __name__ == "__main__":  # pragma: no cover - use `python -m vitdemo finetune`
    sys.exit("use: python -m vitdemo finetune ...")
