"""Fine-tune jobs: one folder each, run in their own process, one at a time per server.

A job folder `VITDEMO_HOME/jobs/<id>/` holds:
  data/            the unpacked upload (nothing of the job is written anywhere else)
  records.jsonl    the checked records to train on (absolute image paths inside data/)
  job.json         settings and status: created | queued | running | stopping | stopped | completed |
                   failed | cancelled (queued, then taken out before it started; vitdemo.finetune.job_queue)
  progress.jsonl   one JSON line per event (train_start, step, eval_loss, checkpoint, eval, done, ...)
  checkpoints/     step-NNNNNN/ adapter + optimizer/scheduler state, written atomically
  adapter/         the final LoRA adapter (PEFT format, safetensors); adapter.zip for download
  results.json     before/after metrics and per-example base vs tuned answers
  runner.log       the runner process's log

The runner is `python -m vitdemo finetune --job-dir DIR` (a subprocess, so the server keeps
serving chat). SIGTERM asks it to finish the current step, checkpoint and exit. A lock
file `jobs/.lock` (job id + pid) keeps one job per server; a lock whose process is gone is
stale and broken. A job marked running whose process is gone is marked failed; its last
checkpoint is intact and it can be resumed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vitdemo.errors import BusyError, InputError, VitdemoError
from vitdemo.paths import REPO_ROOT

logger = logging.getLogger(__name__)

ACTIVE = ("running", "stopping")
QUEUED = "queued"  # waiting for the running job to end (vitdemo.finetune.job_queue)
FINAL = ("stopped", "completed", "failed")
_children: dict[int, subprocess.Popen] = {}  # runner processes this server started (reaped on poll)


def jobs_root(home: str | os.PathLike) -> Path:
    return Path(home).expanduser() / "jobs"


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    # one temp file per process and thread: the server's queue thread and its request threads write too
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


# ---------------------------------------------------------------- processes

def pid_alive(pid: int | None, must_contain: str | None = None) -> bool:
    """True if `pid` is a live (not zombie) process, whose command line holds `must_contain`."""
    if not pid or pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:  # our own child: reap it
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            if must_contain is not None:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return must_contain in cmd
        except (OSError, IndexError):
            return False
    return True


# ---------------------------------------------------------------- lock

@dataclass
class JobLock:
    """`jobs/.lock`: {"job_id", "pid"} of the one job that may run; stale when pid is gone."""

    root: Path

    @property
    def path(self) -> Path:
        return self.root / ".lock"

    def holder(self) -> dict[str, Any] | None:
        """The live holder, or None (a stale lock is removed)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            data = {}
        if pid_alive(data.get("pid")):
            return data
        logger.warning("removing stale job lock %s (process %s is gone)", self.path, data.get("pid"))
        self.path.unlink(missing_ok=True)
        return None

    def acquire(self, job_id: str, pid: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # stale lock removed: try again
                if holder.get("job_id") == job_id:
                    self.update(job_id, pid)
                    return
                raise BusyError(
                    f"a fine-tune job is already running on this server (job {holder.get('job_id')}); one job "
                    "runs at a time: wait for it to finish or stop it"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump({"job_id": job_id, "pid": pid, "since": time.time()}, fh)
            return
        raise BusyError("the job lock is contended; try again in a moment")

    def update(self, job_id: str, pid: int) -> None:
        _atomic_write_json(self.path, {"job_id": job_id, "pid": pid, "since": time.time()})

    def release(self, job_id: str) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if data.get("job_id") == job_id:
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- job folders

class Job:
    """A job folder and its files."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.dir = Path(folder)

    @property
    def id(self) -> str:
        return self.dir.name

    data_dir = property(lambda self: self.dir / "data")
    records_path = property(lambda self: self.dir / "records.jsonl")
    job_json = property(lambda self: self.dir / "job.json")
    progress_path = property(lambda self: self.dir / "progress.jsonl")
    checkpoints_dir = property(lambda self: self.dir / "checkpoints")
    adapter_dir = property(lambda self: self.dir / "adapter")
    results_path = property(lambda self: self.dir / "results.json")
    log_path = property(lambda self: self.dir / "runner.log")

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.job_json.read_text())
        except FileNotFoundError:
            raise VitdemoError(f"{self.dir} is not a job folder (no job.json)") from None

    def update(self, **changes: Any) -> dict[str, Any]:
        data = self.read() if self.job_json.exists() else {}
        data.update(changes)
        data["updated"] = time.time()
        _atomic_write_json(self.job_json, data)
        return data

    def event(self, event: dict[str, Any]) -> None:
        """Append one JSON line to progress.jsonl (flushed at once: the page polls it)."""
        with self.progress_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, ensure_ascii=False) + "\n")

    def events(self) -> list[dict[str, Any]]:
        return list(iter_events(self.progress_path))

    def results(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.results_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def latest_checkpoint(self) -> Path | None:
        from vitdemo.finetune.trainer import list_checkpoints

        ckpts = list_checkpoints(self.checkpoints_dir)
        return ckpts[-1] if ckpts else None

    def refresh(self) -> dict[str, Any]:
        """job.json, with a running job whose process is gone marked failed (or stopped, when
        it was asked to stop: a Stop in the runner's first moments, before it handles the
        signal, ends the process at once)."""
        data = self.read()
        marker = data.get("pid_marker") or self.id  # text the runner's command line contains
        if data.get("status") in ACTIVE and not pid_alive(data.get("pid"), must_contain=marker):
            if data.get("status") == "stopping":
                data = self.update(status="stopped", pid=None)
                self.event({"event": "stopped", "time": time.time()})
                return data
            ckpt = self.latest_checkpoint()
            note = (f"; the last checkpoint ({ckpt.name}) is intact: press Resume" if ckpt
                    else "; no checkpoint was written yet: start again")
            data = self.update(status="failed",
                               error=f"the training process ended unexpectedly (killed or out of memory){note}")
            self.event({"event": "failed", "time": time.time(), "message": data["error"]})
        return data


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed lines of a progress.jsonl; a half-written last line is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def new_job(home: str | os.PathLike, *, model: str, config: dict[str, Any], quant: str = "auto",
            device: str = "auto", owner: str | None = None) -> Job:
    """Create `jobs/<id>/` with an empty data/ folder and job.json (status created).

    `owner` is an owners.Owner.id (None for jobs made by the command line: only the teacher
    and, once shared, everyone see those in the app)."""
    root = jobs_root(home)
    root.mkdir(parents=True, exist_ok=True)
    job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    job = Job(root / job_id)
    job.data_dir.mkdir(parents=True)
    job.update(id=job_id, created=time.time(), status="created", model=model, quant=quant, device=device,
               config=config, pid=None, error=None, owner=owner, shared=False)
    return job


def list_jobs(home: str | os.PathLike) -> list[dict[str, Any]]:
    """Every job (newest first), statuses refreshed; unreadable folders are skipped."""
    root = jobs_root(home)
    if not root.is_dir():
        return []
    out = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True):
        try:
            data = Job(folder).refresh()
        except (VitdemoError, ValueError, OSError):
            continue
        data["id"] = folder.name  # the folder name is the id open_job uses, whatever job.json says
        data["dir"] = str(folder)
        data["has_adapter"] = (folder / "adapter" / "adapter_config.json").is_file()
        out.append(data)
    return out


def prune_jobs(home: str | os.PathLike, ttl_hours: float, now: float | None = None) -> list[str]:
    """Bound the disk the jobs use; returns what was pruned ("<id>: what").

    A job untouched for `ttl_hours` (0 = never prune) and not running loses what only
    training needs: a completed job with an adapter keeps adapter/, adapter.zip, results
    and its record (still listed, loadable and downloadable) and drops data/, records and
    checkpoints/; any other finished job (failed, stopped, never started) is removed.
    """
    if ttl_hours <= 0:
        return []
    now = time.time() if now is None else now
    pruned = []
    for data in list_jobs(home):
        touched = max(float(data.get("updated") or 0), float(data.get("created") or 0))
        if data.get("status") in ACTIVE or data.get("status") == QUEUED or now - touched < ttl_hours * 3600 or data.get("pruned"):
            continue
        job = Job(data["dir"])
        if data.get("status") == "completed" and data["has_adapter"]:
            for bulky in (job.data_dir, job.checkpoints_dir):
                shutil.rmtree(bulky, ignore_errors=True)
            job.records_path.unlink(missing_ok=True)
            job.update(pruned=True)  # touches `updated`; the flag keeps it from being pruned again
            pruned.append(f"{job.id}: training data and checkpoints removed, adapter kept")
        else:
            shutil.rmtree(job.dir, ignore_errors=True)
            pruned.append(f"{job.id}: removed ({data.get('status')})")
    for line in pruned:
        logger.info("job older than %s h pruned: %s", ttl_hours, line)
    return pruned


def open_job(home: str | os.PathLike, job_id: str) -> Job:
    """The job with this id under home (ids from the client are checked: no paths)."""
    if not job_id or "/" in job_id or "\\" in job_id or job_id.startswith("."):
        raise InputError(f"{job_id!r} is not a job id")
    job = Job(jobs_root(home) / job_id)
    if not job.job_json.is_file():
        raise InputError(f"no job {job_id!r}")
    return job


# ---------------------------------------------------------------- start / stop

def start_job(home: str | os.PathLike, job: Job, *, resume: bool = False,
              python: str | None = None) -> subprocess.Popen:
    """Take the lock and start the runner process for `job`; BusyError if one is running."""
    lock = JobLock(jobs_root(home))
    lock.acquire(job.id, os.getpid())
    try:
        if not job.records_path.is_file():
            raise InputError("the job has no checked records yet: check the data first")
        if resume and job.latest_checkpoint() is None:
            raise InputError("this job has no checkpoint to resume from: start it again instead")
        cmd = [python or sys.executable, "-m", "vitdemo", "finetune", "--job-dir", str(job.dir)]
        if resume:
            cmd.append("--resume")
        env = dict(os.environ, VITDEMO_HOME=str(Path(home).expanduser()), PYTHONUNBUFFERED="1")
        env.setdefault("VITDEMO_RUNNER_NICE", "5")  # the server's chat keeps priority over training
        try:
            with job.log_path.open("ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(REPO_ROOT), env=env,
                                        start_new_session=True)
        except OSError as err:
            raise VitdemoError(f"the training process could not be started: {err}") from None
        _children[proc.pid] = proc
        # Status and pid in one write: a page reading the job between two writes would take a
        # running job without a pid for one whose process died.
        job.update(status="running", error=None, resumed=resume, pid=proc.pid)
        lock.update(job.id, proc.pid)
    except BaseException:
        lock.release(job.id)
        raise
    logger.info("started job %s (pid %d%s)", job.id, proc.pid, ", resuming" if resume else "")
    return proc


def stop_job(job: Job, wait_s: float = 0.0) -> dict[str, Any]:
    """Ask the runner to stop (SIGTERM: it checkpoints and exits); optionally wait for it."""
    data = job.refresh()
    pid = data.get("pid")
    marker = data.get("pid_marker") or job.id
    if data.get("status") not in ACTIVE or not pid_alive(pid, must_contain=marker):
        return data
    job.update(status="stopping")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    # Identity checked above; while exiting, a process's cmdline is already empty.
    while wait_s and time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    return job.refresh()


def running_job(home: str | os.PathLike) -> str | None:
    """Id of the job holding the lock, if its process is alive."""
    holder = JobLock(jobs_root(home)).holder()
    return holder.get("job_id") if holder else None
