"""The body of a fine-tune job: load, split, evaluate, train, evaluate, export, report.

Runs inside the job's own process (`python -m vitdemo finetune --job-dir DIR`) or in the
CLI's process (`python -m vitdemo finetune --data ... --out ...`). Everything it writes
goes into the job folder; every step is an event in progress.jsonl. Launched data-parallel
(vitdemo.finetune.processes), every process runs this and only the first one writes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from vitdemo.finetune.data.records import read_records
from vitdemo.errors import VitdemoError
from vitdemo.finetune.jobs import Job, JobLock

logger = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT (or by code); the training loop checks it between steps."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def handler(signum: int, frame: Any) -> None:
            logger.info("signal %d: stopping after the current step", signum)
            self.requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def configure_threads() -> int:
    """CPU threads for training: VITDEMO_TRAIN_THREADS, else all cores but one (min 1).

    Leaving a core free keeps the server's chat responsive; and on a busy machine, torch's
    OpenMP threads fighting other processes for cores made a tiny model's step 25x slower
    with 2 threads than with 1 (measured on this 2-core machine under load).
    """
    import torch

    raw = os.environ.get("VITDEMO_TRAIN_THREADS", "")
    n = int(raw) if raw.strip().isdigit() and int(raw) > 0 else max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(n)
    return n


def _load(job_data: dict[str, Any]) -> Any:
    from vitdemo.core.loading import load_model

    return load_model(job_data["model"], quant=job_data.get("quant", "auto"), device=job_data.get("device", "auto"),
                      dtype="auto")


def _summary(trainer: Any, before: dict, after: dict | None, wall: float) -> dict[str, Any]:
    losses = trainer.state.losses
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    seconds = trainer.state.train_seconds
    samples = trainer.state.step * trainer.cfg.batch_size * trainer.cfg.grad_accum * trainer.acc.num_processes
    return {
        "steps": trainer.state.step,
        "total_steps": trainer.state.total_steps,
        "seconds": round(seconds, 2),
        "wall_seconds": round(wall, 2),
        "samples_per_s": round(samples / seconds, 2) if seconds else None,
        "train_loss": round(sum(tail) / len(tail), 5) if tail else None,
        "first_loss": losses[0] if losses else None,
        "n_train": len(trainer.train_items),
        "n_eval": len(trainer.eval_items),
        "eval_before": before,
        "eval_after": after,
    }


OTHER_ERRORS_WAIT_S = 3.0  # how long the first process looks for the others' errors after its own failure


class _JobWriter:
    """The job folder's writes, done by the first of several data-parallel processes only."""

    def __init__(self, job: Job, enabled: bool) -> None:
        self.job, self.enabled = job, enabled

    def update(self, **fields: Any) -> None:
        if self.enabled:
            self.job.update(**fields)

    def event(self, event: dict[str, Any]) -> None:
        if self.enabled:
            self.job.event(event)

    def text(self, path: Path, text: str) -> None:
        if self.enabled:
            path.write_text(text)


def run_job(job_dir: str | os.PathLike, *, resume: bool = False, stop: StopFlag | None = None,
            loaded: Any = None) -> dict[str, Any]:
    """Run the job in `job_dir` to completion (or stop); returns the summary (also in results.json)."""
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.trainer import Trainer, make_items, split_records, zip_adapter
    from vitdemo.finetune.sft import exact_match

    from vitdemo.finetune import processes

    started = time.perf_counter()
    job = Job(job_dir)
    data = job.read()
    stop = stop or StopFlag()
    stop.install()
    threads = configure_threads()
    if os.environ.get("VITDEMO_RUNNER_NICE"):
        os.nice(int(os.environ["VITDEMO_RUNNER_NICE"]))  # chat requests in the server come first
    main = processes.is_main()
    processes.clear_failure(job.dir)
    write = _JobWriter(job, enabled=main)
    lock = JobLock(job.dir.parent) if job.dir.parent.name == "jobs" and main else None
    if lock is not None:
        lock.acquire(job.id, os.getpid())
    write.update(status="running", pid=os.getpid(), error=None)
    try:
        cfg = FinetuneConfig.from_dict(data["config"])
        write.event({"event": "loading", "time": time.time(), "model": data["model"], "threads": threads})
        if loaded is None:
            loaded = _load(data)
        model, processor = loaded.model, loaded.processor
        records = read_records(job.records_path)
        train_records, held_records = split_records(records, cfg.eval_fraction, cfg.seed)
        write.event({"event": "preparing", "time": time.time(), "n_train": len(train_records),
                   "n_eval": len(held_records)})
        train_items = make_items(processor, train_records)
        eval_items = make_items(processor, held_records)
        trainer = Trainer(model, processor, train_items, eval_items, cfg, job.dir, on_event=write.event,
                          should_stop=stop)
        before_path = job.dir / "eval_before.json"
        if resume and before_path.is_file():
            before_full = json.loads(before_path.read_text())
        else:
            res = trainer.evaluate()
            before_full = {**res.as_dict(), "answers": res.answers}
            write.text(before_path, json.dumps(before_full, ensure_ascii=False))
        before = {k: before_full[k] for k in ("loss", "exact_match", "n")}
        write.event({"event": "eval", "time": time.time(), "phase": "before", **before})
        if trainer.any_process(stop()):  # data-parallel: all stop here, or none (each would wait for the others)
            status = "stopped"
        else:
            status = trainer.train(resume=resume)
        after = None
        if status == "completed":
            trainer.save_adapter(job.adapter_dir)
            if main:
                zip_adapter(job.adapter_dir, job.dir / "adapter.zip")
            res = trainer.evaluate()
            after = res.as_dict()
            write.event({"event": "eval", "time": time.time(), "phase": "after", **after})
            retention = trainer.retention_report()  # the forgetting report: base answers kept on held-out probes
            write.event({"event": "retention", "time": time.time(), **retention})
            examples = [{
                "id": it.id, "image": str(r.images[0]) if r.images else None, "question": it.question,
                "reference": it.reference, "base": b, "tuned": t, "correct": exact_match(t, it.reference),
            } for it, r, b, t in zip(trainer.eval_items, held_records, before_full.get("answers", []), res.answers)]
        else:
            examples, retention = [], None
        summary = _summary(trainer, before, after, time.perf_counter() - started)
        summary["retention"] = retention
        summary["adapter"] = str(job.adapter_dir) if status == "completed" else None
        ckpt = job.latest_checkpoint()
        summary["checkpoint"] = str(ckpt) if ckpt else None
        if examples:
            write.text(job.results_path, json.dumps({"summary": summary, "examples": examples},
                                                    ensure_ascii=False, indent=1))
        write.update(status=status, summary=summary, pid=None)
        write.event({"event": "done" if status == "completed" else "stopped", "time": time.time(), **summary})
        logger.info("job %s %s: %s", job.id, status, summary)
        return {"status": status, **summary}
    except BaseException as exc:
        message = str(exc) if isinstance(exc, VitdemoError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        logger.exception("job %s failed", job.id) if not isinstance(exc, VitdemoError) else None
        if not main:
            processes.leave_failure(job.dir, message)
        elif processes.world_size() > 1:
            others = processes.failures_of_others(job.dir, OTHER_ERRORS_WAIT_S)
            if others:  # the real cause; the first process's own error is then its broken connection
                message = "; ".join(others) + f" (then the first process: {message})"
        ckpt = job.latest_checkpoint()
        if ckpt:
            message += f" (the last checkpoint, {ckpt.name}, is intact: resume from it)"
        write.update(status="failed", error=message, pid=None)
        write.event({"event": "failed", "time": time.time(), "message": message})
        raise
    finally:
        if lock is not None:
            lock.release(job.id)
