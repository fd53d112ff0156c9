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
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.errors import BusyError, DatasetError, InputError
from vitdemo.finetune import job_queue
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.forgetting import retention_notes, retention_row
from vitdemo.finetune.jobs import Job, list_jobs, new_job, open_job, prune_jobs, running_job, start_job, stop_job
from vitdemo.finetune.owners import Owner, can_change, can_see

logger = logging.getLogger(__name__)

GALLERY_MAX = 24  # thumbnails shown in the report
PROBLEMS_MAX = 500  # rows of the problems table
MERGED_DOWNLOAD_MAX_MB = 500  # a merged model folder larger than this is not zipped for download


@dataclass
class CheckResult:
    job: Job
    report: DatasetReport


def cutoff_for(model: Any) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(min(getattr(cfg, "max_position_embeddings", 2048) or 2048, 2048))


def _limits(engine: Engine, settings: Settings) -> DataLimits:
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


def _new_job(engine: Engine, settings: Settings, owner: Owner) -> Job:
    """A fresh job folder; old jobs are pruned first (settings.job_ttl_hours), so disk stays bounded."""
    prune_jobs(settings.home, getattr(settings, "job_ttl_hours", 0))
    return new_job(settings.home, model=engine.loaded.source, config={}, quant=settings.quant, device=settings.device,
                   owner=owner.id)


def _open(settings: Settings, job_id: str, owner: Owner | None, change: bool = False) -> Job:
    """The job, if this owner may see it (or change it): anyone else's reads as "no such job"."""
    job = open_job(settings.home, job_id)
    allowed = can_change if change else can_see
    if not allowed(job.read(), owner):
        if change and can_see(job.read(), owner):
            raise InputError("this job was shared with you to look at and use; only its owner can change it")
        raise InputError(f"no job {job_id!r}")
    return job


def check_upload(engine: Engine, settings: Settings, files: Sequence[str], owner: Owner,
                 previous_job: str | None = None) -> CheckResult:
    """Copy/unpack the uploads into a new job's data folder and check them."""
    if not files:
        raise DatasetError("upload a zip (images + annotation file) or an annotation file first")
    _discard_unstarted(settings.home, previous_job)
    job = _new_job(engine, settings, owner)
    limits = _limits(engine, settings)
    try:
        ingest_upload(files, job.data_dir, limits)
        report = load_dataset(job.data_dir, processor=engine.processor, limits=limits)
    except BaseException:
        shutil.rmtree(job.dir, ignore_errors=True)
        raise
    return CheckResult(job, report)


def check_pairs(engine: Engine, settings: Settings, images: Sequence[str], rows: Sequence[Sequence[Any]], owner: Owner,
                previous_job: str | None = None) -> CheckResult:
    """Pairs typed in the page: rows of (image file name, instruction, answer)."""
    rows = [list(r) + [""] * (3 - len(r)) for r in rows if any(str(c or "").strip() for c in r)]
    if not rows:
        raise DatasetError("type at least one pair: image file name, instruction, answer")
    _discard_unstarted(settings.home, previous_job)
    job = _new_job(engine, settings, owner)
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


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 record', '2 records' (`many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def report_markdown(report: DatasetReport) -> str:
    s = report.summary()
    if report.fatal:
        return f"**The data cannot be used:** {report.all_problems()[0].message}"
    tokens = (f"tokens per record (image tokens included): min {s['tokens_min']}, mean {s['tokens_mean']}, "
              f"max {s['tokens_max']}; cut-off {s['max_tokens']}" if s["tokens_max"] is not None else "")
    if report.ok:
        verdict = "**Ready to train.**"
    elif not s["good"]:
        verdict = f"**{plural(s['errors'], 'problem')}** and no good record: fix the data and upload it again."
    else:
        good = "the good record" if s["good"] == 1 else f"the {s['good']} good records"
        verdict = (f"**{plural(s['errors'], 'problem')}** in {plural(s['bad'], 'record')}: fix them and upload "
                   f"again, or tick *drop bad records* to train on {good} only.")
    return (f"Format **{s['format']}** (`{s['annotation']}`): **{plural(s['records'], 'record')}**, "
            f"{plural(s['images'], 'image')}, {plural(s['turns'], 'answer turn')}, "
            f"{plural(s['warnings'], 'warning')}. {tokens}\n\n{verdict}")


def can_start(checked: CheckResult | None, drop_bad: bool) -> bool:
    """Whether Start may be pressed for this check: usable data, not started yet."""
    if checked is None:
        return False
    rep = checked.report
    if rep.fatal or not rep.good or (not rep.ok and not drop_bad):
        return False
    try:
        return checked.job.read().get("status") == "created"
    except Exception:  # the folder was discarded by a newer check or pruned
        return False


def gallery_items(report: DatasetReport) -> list[tuple[str, str]]:
    out = []
    for r in report.records[:GALLERY_MAX]:
        paths = report.images_in(r) if r.images else []
        if paths and paths[0].is_file() and r.ok:
            out.append((str(paths[0]), f"{r.answer[:30]} | {r.instruction[:60]}"))
    return out


def problem_rows(report: DatasetReport) -> list[list[Any]]:
    return [p.as_row() for p in report.all_problems()[:PROBLEMS_MAX]]


def start_checked(engine: Engine, settings: Settings, checked: CheckResult, config: dict[str, Any], drop_bad: bool,
                  owner: Owner) -> Job:
    """Start the job of a check result (works for uploads and typed pairs alike)."""
    job, report = _open(settings, checked.job.id, owner, change=True), checked.report
    cfg = FinetuneConfig.from_dict(config)
    if job.read().get("status") != "created":
        raise InputError(f"job {job.id} was already started; use Resume, or check the data again for a new job")
    records = report.usable_records(drop_bad=drop_bad)
    save_records(records, report, job.records_path)
    job.update(config=cfg.to_dict(), data=report.summary(), drop_bad=drop_bad)
    _start_or_queue(settings, job)
    return job


def _start_or_queue(settings: Settings, job: Job, resume: bool = False) -> None:
    """Start the job now if no job runs and none waits before it; otherwise queue it (it
    starts by itself, in turn, when the running one ends)."""
    job_queue.ensure_worker(settings.home)
    if running_job(settings.home) or job_queue.queued_ids(settings.home):
        job_queue.enqueue(job, resume=resume)
        return
    try:
        start_job(settings.home, job, resume=resume)
    except BusyError:  # another user's job took the slot a moment ago
        job_queue.enqueue(job, resume=resume)


def resume(settings: Settings, job_id: str, owner: Owner) -> Job:
    job = _open(settings, job_id, owner, change=True)
    data = job.refresh()
    if data.get("status") in ("running", "stopping", job_queue.QUEUED):
        raise InputError("this job is running already" if data.get("status") != job_queue.QUEUED
                         else "this job is waiting in the queue already")
    if data.get("status") == "completed":
        raise InputError("this job has finished; there is nothing to resume")
    if job.latest_checkpoint() is None:
        raise InputError("this job has no checkpoint to resume from: start it again instead")
    _start_or_queue(settings, job, resume=True)
    return job


def stop(settings: Settings, job_id: str, owner: Owner) -> dict[str, Any]:
    """Stop a running job (it checkpoints first) or take a queued one out of the queue."""
    job = _open(settings, job_id, owner, change=True)
    if job_queue.cancel(job):
        return {**job.read(), "taken_out_of_queue": True}
    return stop_job(job, wait_s=0)  # running (or started from the queue a moment ago)


def share(settings: Settings, job_id: str, owner: Owner, shared: bool = True) -> None:
    """Mark a job shared with everyone on this server (the class), or private again."""
    _open(settings, job_id, owner, change=True).update(shared=bool(shared))


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
    results_note: str = ""  # why there is no before/after table, when there is none
    shared: bool = False
    changeable: bool = False  # this user may stop, resume, merge and share it (owner or teacher)


def _current_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events since the last start or resume (a resumed run's pause is not training time)."""
    starts = [i for i, e in enumerate(events) if e["event"] in ("loading", "train_start")]
    return events[starts[-1]:] if starts else events


def eta_seconds(events: list[dict[str, Any]], window: int = 20) -> float | None:
    """Seconds left, from the time per step of the current run's last `window` steps."""
    steps = [e for e in _current_run(events) if e["event"] == "step"]
    recent = steps[-window:]
    if len(recent) < 2:
        return None
    total = recent[-1]["total_steps"]
    per_step = (recent[-1]["time"] - recent[0]["time"]) / (recent[-1]["step"] - recent[0]["step"] or 1)
    return max(0.0, per_step * (total - recent[-1]["step"]))


def _no_results_note(events: list[dict[str, Any]], data: dict[str, Any]) -> str:
    """Why a finished job has no before/after table (nothing held out)."""
    prep = [e for e in events if e["event"] == "preparing"]
    if not prep or prep[-1].get("n_eval"):
        return ""
    n_train = prep[-1].get("n_train", 0)
    share = float((data.get("config") or {}).get("eval_fraction", 0.1))
    return (f"No before/after table: all {plural(n_train, 'record')} went into training and none was held out "
            f"to compare on (a held-out share of {share:.0%} of {n_train} rounds to 0; at least one record is held "
            "out from 10 records on). Upload more records, or raise the held-out share in the LoRA settings.")


def progress(settings: Settings, job_id: str, owner: Owner | None) -> Progress:
    job = _open(settings, job_id, owner)
    data = job.refresh()
    events = job.events()
    steps = [e for e in events if e["event"] == "step"]
    curve = [(e["step"], e["loss"], "train") for e in steps]
    curve += [(e["step"], e["eval_loss"], "held-out") for e in events if e["event"] == "eval_loss"]
    step = steps[-1]["step"] if steps else 0
    total = steps[-1]["total_steps"] if steps else next(
        (e["total_steps"] for e in events if e["event"] == "train_start"), 0)
    eta = eta_seconds(events) if data.get("status") == "running" and total else None
    phase = events[-1]["event"] if events else "starting"
    message = _status_line(data, phase, step, total, eta, job_queue.position(settings.home, job.id)
                           if data.get("status") == job_queue.QUEUED else None,
                           checkpoint=job.latest_checkpoint() is not None)
    results = job.results()
    note = _no_results_note(events, data) if results is None and data.get("status") == "completed" else ""
    return Progress(data.get("status", "?"), step, total, eta, curve, message, results, note,
                    bool(data.get("shared")), can_change(data, owner))


def _status_line(data: dict[str, Any], phase: str, step: int, total: int, eta: float | None,
                 place: int | None = None, checkpoint: bool = True) -> str:
    status = data.get("status")
    if status == job_queue.QUEUED:
        ahead = "next in line" if place == 1 else f"number {place} in line" if place else "in line"
        return (f"Queued ({ahead}): another job is training; this one starts by itself when the jobs before it "
                "end. Stop takes it out of the queue.")
    if status == job_queue.CANCELLED:
        return "Taken out of the queue before it started. Check the data again to start a new job."
    if status == "failed":
        return f"Failed: {data.get('error')}"
    if status == "completed":
        s = data.get("summary") or {}
        return f"Done: {s.get('steps')} steps in {s.get('seconds')} s ({s.get('samples_per_s')} samples/s)."
    if status == "stopped":
        if not checkpoint:
            return (f"Stopped at step {step} of {total or '?'}, before its first checkpoint: nothing to resume; "
                    "check the data again to start a new job.")
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


def job_choices(settings: Settings, owner: Owner | None) -> list[tuple[str, str]]:
    """(label, id) of the started jobs this owner may see: their own, shared ones (all, for the teacher)."""
    out = []
    for j in list_jobs(settings.home):
        if j.get("status") == "created" or not can_see(j, owner):
            continue
        when = time.strftime("%H:%M", time.localtime(j.get("created", 0)))
        whose = "" if owner is not None and j.get("owner") == owner.id else ", shared" if j.get("shared") else \
            ", another user's"
        out.append((f"{j['id']} ({j.get('status')}, {when}{whose})", j["id"]))
    return out


def adapter_paths(settings: Settings, job_id: str, owner: Owner | None) -> tuple[Path, Path]:
    job = _open(settings, job_id, owner)
    if not (job.adapter_dir / "adapter_config.json").is_file():
        raise InputError("this job has no finished adapter yet")
    return job.adapter_dir, job.dir / "adapter.zip"


def merge(settings: Settings, job_id: str, owner: Owner) -> Path:
    from vitdemo.finetune.trainer import merge_adapter

    job = _open(settings, job_id, owner, change=True)
    adapter, _ = adapter_paths(settings, job_id, owner)
    return merge_adapter(job.read()["model"], adapter, job.dir / "merged")


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def merged_zip(merged: Path, max_mb: float = MERGED_DOWNLOAD_MAX_MB) -> Path | None:
    """A zip of the merged model folder for download, or None when it is over `max_mb`."""
    if folder_mb(merged) > max_mb:
        return None
    out = merged.with_name("merged.zip")
    tmp = shutil.make_archive(str(merged.with_name(".merged-partial")), "zip", root_dir=merged.parent,
                              base_dir=merged.name)  # written aside, then renamed: never a half zip
    Path(tmp).replace(out)
    return out


def merge_markdown(merged: Path, zipped: Path | None) -> str:
    """What the person on the page gets, and where the folder is for whoever runs the server."""
    size = folder_mb(merged)
    where = (f"On the server the full model folder is `{merged.name}/` in this job's folder; whoever runs the "
             "server can load it with `--model` and that folder.")
    if zipped is not None:
        return f"**Merged** ({size:.1f} MB): download it with the button below and unzip it. {where}"
    return (f"**Merged** ({size:.0f} MB, too big to download here, over {MERGED_DOWNLOAD_MAX_MB} MB). {where} "
            "From elsewhere, download the adapter (a few MB) and load it on the same base model.")


def zip_path(settings: Settings, job_id: str, owner: Owner | None) -> str | None:
    job = _open(settings, job_id, owner)
    path = job.dir / "adapter.zip"
    return str(path) if path.is_file() else None


def busy_message(settings: Settings, busy: str, owner: Owner | None) -> str:
    """One job trains at a time: others wait in a queue; says whose job runs and how many wait."""
    try:
        data = open_job(settings.home, busy).read()
    except InputError:
        data = {}
    mine = owner is not None and data.get("owner") == owner.id
    whose = f"your job `{busy}`" if mine else f"job `{busy}`" if can_see(data, owner) else "another user's job"
    waiting = len(job_queue.queued_ids(settings.home))
    queue = f" {plural(waiting, 'job')} waiting." if waiting else ""
    return (f"A fine-tune job is training on this server ({whose}). One job trains at a time: a job started now "
            f"waits in a queue and starts by itself when the jobs before it end.{queue}")


def running_job_note(settings: Settings, owner: Owner | None = None) -> str:
    """A line for every user while a job runs on this server (one job at a time)."""
    busy = running_job(settings.home)
    return busy_message(settings, busy, owner) if busy else ""
