"""What the Fine-tune page does, without Gradio: check data into a job, start/stop/resume,
read progress (curve, ETA) and results. The UI module only wires these to components.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vitdemo.finetune.data.records import DataLimits, DatasetReport, ingest_upload, load_dataset, records_from_pairs, save_records
from vitdemo.finetune.data.formats import ParseLimits
from vitdemo.errors import DatasetError, InputError
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.forgetting import retention_notes, retention_row
from vitdemo.finetune.jobs import Job, list_jobs, new_job, open_job, prune_jobs, running_job, start_job, stop_job

logger = logging.getLogger(__name__)

GALLERY_MAX = 24  # thumbnails shown in the report
PROBLEMS_MAX = 500  # rows of the problems table


@dataclass
class CheckResult:
    job: Job
    report: DatasetReport


def cutoff_for(model: Any) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(min(getattr(cfg, "max_position_embeddings", 2048) or 2048, 2048))


def _limits(engine: Any, settings: Any) -> DataLimits:
    return DataLimits(parse=ParseLimits(max_records=settings.max_records),
                      max_tokens=cutoff_for(engine.model), max_image_pixels=settings.max_image_pixels)


def _discard_unstarted(home: Path, job_id: str | None) -> None:
    """A re-check replaces the previous check's job folder if it never started."""
    if not job_id:
        return
    try:
        job = open_job(home, job_id)
    except InputError:
        return
    if job.read().get("status") == "created":
        shutil.rmtree(job.dir, ignore_errors=True)


def _new_job(engine: Any, settings: Any) -> Job:
    """A fresh job folder; old jobs are pruned first (settings.job_ttl_hours), so disk stays bounded."""
    prune_jobs(settings.home, getattr(settings, "job_ttl_hours", 0))
    return new_job(settings.home, model=engine.loaded.source, config={}, quant=settings.quant, device=settings.device)


def check_upload(engine: Any, settings: Any, files: Sequence[str], previous_job: str | None = None) -> CheckResult:
    """Copy/unpack the uploads into a new job's data folder and check them."""
    if not files:
        raise DatasetError("upload a zip (images + annotation file) or an annotation file first")
    _discard_unstarted(settings.home, previous_job)
    job = _new_job(engine, settings)
    limits = _limits(engine, settings)
    try:
        ingest_upload(files, job.data_dir, limits)
        report = load_dataset(job.data_dir, processor=engine.processor, limits=limits)
    except BaseException:
        shutil.rmtree(job.dir, ignore_errors=True)
        raise
    return CheckResult(job, report)


def check_pairs(engine: Any, settings: Any, images: Sequence[str], rows: Sequence[Sequence[Any]],
                previous_job: str | None = None) -> CheckResult:
    """Pairs typed in the page: rows of (image file name, instruction, answer)."""
    rows = [list(r) + [""] * (3 - len(r)) for r in rows if any(str(c or "").strip() for c in r)]
    if not rows:
        raise DatasetError("type at least one pair: image file name, instruction, answer")
    _discard_unstarted(settings.home, previous_job)
    job = _new_job(engine, settings)
    limits = _limits(engine, settings)
    try:
        if images:
            ingest_upload(images, job.data_dir, limits)
        pairs = [(str(r[0] or "").strip() or None, str(r[1] or ""), str(r[2] or "")) for r in rows]
        report = records_from_pairs(pairs, job.data_dir, limits, processor=engine.processor)
    except BaseException:
        shutil.rmtree(job.dir, ignore_errors=True)
        raise
    return CheckResult(job, report)


def report_markdown(report: DatasetReport) -> str:
    s = report.summary()
    if report.fatal:
        return f"**The data cannot be used:** {report.all_problems()[0].message}"
    tokens = (f"tokens per record (image tokens included): min {s['tokens_min']}, mean {s['tokens_mean']}, "
              f"max {s['tokens_max']}; cut-off {s['max_tokens']}" if s["tokens_max"] is not None else "")
    verdict = ("**Ready to train.**" if report.ok else
               f"**{s['errors']} problem(s)** in {s['bad']} record(s): fix them and upload again, or tick "
               f"*drop bad records* to train on the {s['good']} good ones.")
    return (f"Format **{s['format']}** (`{s['annotation']}`): **{s['records']}** records, {s['images']} images, "
            f"{s['turns']} answer turns, {s['warnings']} warning(s). {tokens}\n\n{verdict}")


def gallery_items(report: DatasetReport) -> list[tuple[str, str]]:
    out = []
    for r in report.records[:GALLERY_MAX]:
        paths = report.images_in(r) if r.images else []
        if paths and paths[0].is_file() and r.ok:
            out.append((str(paths[0]), f"{r.answer[:30]} | {r.instruction[:60]}"))
    return out


def problem_rows(report: DatasetReport) -> list[list[Any]]:
    return [p.as_row() for p in report.all_problems()[:PROBLEMS_MAX]]


def start_checked(engine: Any, settings: Any, checked: CheckResult, config: dict[str, Any], drop_bad: bool) -> Job:
    """Start the job of a check result (works for uploads and typed pairs alike)."""
    job, report = checked.job, checked.report
    cfg = FinetuneConfig.from_dict(config)
    busy = running_job(settings.home)
    if busy and busy != job.id:
        from vitdemo.errors import BusyError

        raise BusyError(f"a fine-tune job is already running on this server (job {busy}); one runs at a time: "
                        "wait for it to finish, or stop it")
    if job.read().get("status") != "created":
        raise InputError(f"job {job.id} was already started; use Resume, or check the data again for a new job")
    records = report.usable_records(drop_bad=drop_bad)
    save_records(records, report, job.records_path)
    job.update(config=cfg.to_dict(), data=report.summary(), drop_bad=drop_bad)
    start_job(settings.home, job)
    return job


def resume(settings: Any, job_id: str) -> Job:
    job = open_job(settings.home, job_id)
    data = job.refresh()
    if data.get("status") in ("running", "stopping"):
        raise InputError("this job is running already")
    if data.get("status") == "completed":
        raise InputError("this job has finished; there is nothing to resume")
    start_job(settings.home, job, resume=True)
    return job


def stop(settings: Any, job_id: str) -> dict[str, Any]:
    return stop_job(open_job(settings.home, job_id), wait_s=0)


# ---------------------------------------------------------------- progress

@dataclass
class Progress:
    status: str
    step: int
    total: int
    eta_s: float | None
    curve: list[tuple[int, float, str]]  # (step, loss, "train" | "held-out")
    message: str
    results: dict[str, Any] | None


def progress(settings: Any, job_id: str) -> Progress:
    job = open_job(settings.home, job_id)
    data = job.refresh()
    events = job.events()
    steps = [e for e in events if e["event"] == "step"]
    curve = [(e["step"], e["loss"], "train") for e in steps]
    curve += [(e["step"], e["eval_loss"], "held-out") for e in events if e["event"] == "eval_loss"]
    step = steps[-1]["step"] if steps else 0
    total = steps[-1]["total_steps"] if steps else next(
        (e["total_steps"] for e in events if e["event"] == "train_start"), 0)
    eta = None
    recent = steps[-20:]
    if data.get("status") == "running" and len(recent) >= 2 and total:
        per_step = (recent[-1]["time"] - recent[0]["time"]) / (recent[-1]["step"] - recent[0]["step"] or 1)
        eta = max(0.0, per_step * (total - step))
    phase = events[-1]["event"] if events else "starting"
    message = _status_line(data, phase, step, total, eta)
    return Progress(data.get("status", "?"), step, total, eta, curve, message, job.results())


def _status_line(data: dict[str, Any], phase: str, step: int, total: int, eta: float | None) -> str:
    status = data.get("status")
    if status == "failed":
        return f"Failed: {data.get('error')}"
    if status == "completed":
        s = data.get("summary") or {}
        return f"Done: {s.get('steps')} steps in {s.get('seconds')} s ({s.get('samples_per_s')} samples/s)."
    if status == "stopped":
        return f"Stopped at step {step} of {total}; the checkpoint is kept: press Resume to continue."
    if status in ("running", "stopping"):
        what = {"loading": "loading the model", "preparing": "preparing the examples",
                "eval": "evaluating", "checkpoint": "saving a checkpoint"}.get(phase, "training")
        if phase == "train_start" or phase in ("eval_loss", "step") or (phase == "eval" and step):
            what = "training" if phase != "eval" else "evaluating"
        eta_txt = f", about {eta:.0f} s left" if eta is not None else ""
        stopping = " (stopping after this step)" if status == "stopping" else ""
        return f"Running: {what}, step {step} of {total or '?'}{eta_txt}{stopping}."
    return "Not started."


def results_rows(results: dict[str, Any] | None) -> list[list[Any]]:
    if not results:
        return []
    def cut(text: str, n: int = 60) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    return [[Path(e["image"]).name if e.get("image") else "", cut(e["question"], 80), cut(e["reference"]),
             cut(e["base"]), cut(e["tuned"]), "yes" if e.get("correct") else "no"]
            for e in results["examples"]]


def results_markdown(results: dict[str, Any] | None) -> str:
    if not results:
        return ""
    s = results["summary"]
    b, a = s["eval_before"], s["eval_after"] or {}

    def pct(x: Any) -> str:
        return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "-"

    def num(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, (int, float)) else "-"

    return (f"| held-out ({b['n']} examples) | before | after |\n|---|---|---|\n"
            f"| exact match | {pct(b['exact_match'])} | {pct(a.get('exact_match'))} |\n"
            f"| loss | {num(b['loss'])} | {num(a.get('loss'))} |\n" + retention_row(s.get("retention")) + "\n"
            f"{s['steps']} steps, {s['seconds']} s of training, final train loss {num(s['train_loss'])}."
            + ("\n\n" + retention_notes(s.get("retention")) if s.get("retention") else ""))


def job_choices(settings: Any) -> list[tuple[str, str]]:
    out = []
    for j in list_jobs(settings.home):
        if j.get("status") == "created":
            continue
        when = time.strftime("%H:%M", time.localtime(j.get("created", 0)))
        out.append((f"{j['id']} ({j.get('status')}, {when})", j["id"]))
    return out


def adapter_paths(settings: Any, job_id: str) -> tuple[Path, Path]:
    job = open_job(settings.home, job_id)
    if not (job.adapter_dir / "adapter_config.json").is_file():
        raise InputError("this job has no finished adapter yet")
    return job.adapter_dir, job.dir / "adapter.zip"


def merge(settings: Any, job_id: str) -> Path:
    from vitdemo.finetune.trainer import merge_adapter

    job = open_job(settings.home, job_id)
    adapter, _ = adapter_paths(settings, job_id)
    return merge_adapter(job.read()["model"], adapter, job.dir / "merged")


def zip_path(settings: Any, job_id: str) -> str | None:
    job = open_job(settings.home, job_id)
    path = job.dir / "adapter.zip"
    return str(path) if path.is_file() else None


def running_job_note(settings: Any) -> str:
    """A line for every user while a job runs on this server (one job at a time)."""
    busy = running_job(settings.home)
    return f"A fine-tune job is running on this server (job `{busy}`); new jobs wait until it ends." if busy else ""
