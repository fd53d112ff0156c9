"""The queue of fine-tune jobs waiting for the one that runs (one job at a time per server).

A job started while another runs is marked `queued` in its job.json (with the time and
whether it resumes), so the queue survives a restart of the server. A worker thread in the
server starts the oldest queued job as soon as no job holds the lock; a queued job can be
taken out again before it starts (`cancel`). Starting and cancelling a queued job hold one
lock per home, so the two never cross.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from vitdemo.errors import BusyError, VitdemoError
from vitdemo.finetune.jobs import QUEUED, Job, jobs_root, open_job, running_job, start_job

logger = logging.getLogger(__name__)

CANCELLED = "cancelled"  # taken out of the queue before it started
POLL_S = 1.0  # how often the worker looks for a free slot (a job start takes longer than this)


_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _queue_lock(home: str | Path) -> threading.Lock:
    """One lock per home around every change of a queued job's status: the worker's start and
    a user's Stop must not both act on the same queued job (a cancelled job must never start)."""
    key = Path(home).expanduser().resolve()
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _home_of(job: Job) -> Path:
    return job.dir.parent.parent  # <home>/jobs/<id>


def enqueue(job: Job, *, resume: bool = False) -> None:
    with _queue_lock(_home_of(job)):
        before = job.read().get("status")
        job.update(status=QUEUED, queued_at=time.time(), queued_resume=resume, queued_from=before, error=None)
    logger.info("job %s queued%s", job.id, " (resume)" if resume else "")


def cancel(job: Job) -> bool:
    """Take a job out of the queue before it starts; False if it is not queued (any more).

    A job queued to resume goes back to what it was (stopped or failed, its checkpoint
    resumable again); a new job becomes `cancelled`."""
    with _queue_lock(_home_of(job)):
        data = job.read()
        if data.get("status") != QUEUED:
            return False
        job.update(status=data.get("queued_from") if data.get("queued_resume") else CANCELLED)
        return True


def queued_ids(home: str | Path) -> list[str]:
    """Ids of the queued jobs, first in line first.

    Every page asks this on each tick, so it only reads job.json files: a queued job has no
    process whose liveness `list_jobs` would have to check (and write back)."""
    root = jobs_root(home)
    waiting: list[tuple[float, str]] = []
    for folder in root.iterdir() if root.is_dir() else ():
        try:
            data = Job(folder).read() if folder.is_dir() and not folder.name.startswith(".") else {}
        except (VitdemoError, ValueError, OSError):
            continue  # a folder being made or removed
        if data.get("status") == QUEUED:
            waiting.append((float(data.get("queued_at") or 0), folder.name))
    return [job_id for _, job_id in sorted(waiting)]


def position(home: str | Path, job_id: str) -> int | None:
    """1 for the next job to start; None if the job is not queued."""
    ids = queued_ids(home)
    return ids.index(job_id) + 1 if job_id in ids else None


def start_next(home: str | Path) -> str | None:
    """Start the first queued job if no job runs; its id, or None."""
    if running_job(home):
        return None
    for job_id in queued_ids(home):
        job = open_job(home, job_id)
        with _queue_lock(home):
            data = job.read()
            if data.get("status") != QUEUED:
                continue  # cancelled meanwhile
            try:
                start_job(home, job, resume=bool(data.get("queued_resume")))
            except BusyError:
                return None  # another start won the lock: it stays queued
            except VitdemoError as err:  # e.g. its records are gone: the next one in line gets the slot
                job.update(status="failed", error=f"could not start from the queue: {err}")
                continue
        logger.info("job %s started from the queue", job_id)
        return job_id
    return None


class QueueWorker(threading.Thread):
    """Starts queued jobs when the slot frees, for as long as the server runs."""

    def __init__(self, home: Path) -> None:
        super().__init__(name=f"job-queue-{home.name}", daemon=True)
        self.home = home
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            try:
                start_next(self.home)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad job folder
                logger.exception("job queue: could not start the next job")


_workers: dict[Path, QueueWorker] = {}
_workers_lock = threading.Lock()


def ensure_worker(home: str | Path) -> QueueWorker:
    """The one worker for this home (started on first use)."""
    key = Path(home).expanduser().resolve()
    with _workers_lock:
        worker = _workers.get(key)
        if worker is None or not worker.is_alive():
            worker = _workers[key] = QueueWorker(key)
            worker.start()
        return worker
