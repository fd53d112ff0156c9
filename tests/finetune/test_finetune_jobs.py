"""Fine-tune jobs as real processes: busy lock, SIGKILL -> failed + resumable, Stop, resume, listing."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ft_helpers import make_job as _make_job, wait_for as _wait
from vitdemo.errors import BusyError, InputError
from vitdemo.finetune.jobs import Job, JobLock, jobs_root, list_jobs, new_job, open_job, pid_alive, start_job, stop_job


def _last_step(job: Job) -> int:
    steps = [e["step"] for e in job.events() if e["event"] == "step"]
    return steps[-1] if steps else 0


def test_stale_lock_is_broken(tmp_path: Path) -> None:
    lock = JobLock(jobs_root(tmp_path))
    lock.root.mkdir(parents=True)
    lock.path.write_text(json.dumps({"job_id": "old", "pid": 2 ** 22 + 12345}))
    assert lock.holder() is None and not lock.path.exists()
    lock.acquire("new", os.getpid())
    with pytest.raises(BusyError, match="already running .*job new"):
        lock.acquire("other", os.getpid())
    lock.release("new")
    assert lock.holder() is None


def test_open_job_refuses_paths(tmp_path: Path) -> None:
    for bad in ("../x", "/etc", ".lock", ""):
        with pytest.raises(InputError):
            open_job(tmp_path, bad)


@pytest.mark.slow
def test_job_lifecycle_kill_stop_resume(tmp_path: Path, tiny_llava_dir: Path) -> None:
    home = tmp_path / "home"
    job = _make_job(home, tiny_llava_dir, max_steps=300, batch_size=4, checkpoint_every=4, lr=5e-3,
                    eval_fraction=0.25)
    proc = start_job(home, job)
    _wait(lambda: _last_step(job) >= 6, 180, "six training steps")

    # One job per server: a second one is refused while the first runs.
    other = _make_job(home, tiny_llava_dir, max_steps=2)
    with pytest.raises(BusyError, match="already running"):
        start_job(home, other)

    # SIGKILL mid-run: the job is marked failed, the last checkpoint is intact.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    data = job.refresh()
    assert data["status"] == "failed" and "checkpoint" in data["error"] and "Resume" in data["error"]
    ckpt = job.latest_checkpoint()
    assert ckpt is not None and int(ckpt.name.split("-")[1]) >= 4
    from safetensors.torch import load_file

    assert load_file(str(ckpt / "adapter_model.safetensors"))  # readable
    killed_at = int(ckpt.name.split("-")[1])

    # Resume (the dead runner's lock is stale and broken); it continues from the checkpoint.
    proc = start_job(home, job, resume=True)
    _wait(lambda: any(e["event"] == "resumed" for e in job.events()), 180, "the resumed event")
    resumed = [e for e in job.events() if e["event"] == "resumed"][-1]
    assert resumed["step"] == killed_at
    _wait(lambda: _last_step(job) >= killed_at + 3, 120, "steps after resuming")

    # Stop: the runner finishes its step, checkpoints and exits within 10 s.
    t0 = time.monotonic()
    data = stop_job(job, wait_s=20)
    assert time.monotonic() - t0 < 10, time.monotonic() - t0
    assert data["status"] == "stopped", data
    assert not pid_alive(proc.pid)
    stopped_at = data["summary"]["steps"]
    assert job.latest_checkpoint().name == f"step-{stopped_at:06d}"
    assert running_lock_free(home)

    # Resume again to the end: completed, adapter + results with base and tuned answers.
    proc = start_job(home, job, resume=True)
    _wait(lambda: job.refresh()["status"] in ("completed", "failed"), 240, "completion")
    data = job.refresh()
    assert data["status"] == "completed", data.get("error")
    assert data["summary"]["steps"] == 300
    results = job.results()
    assert results and results["examples"] and {"base", "tuned", "reference"} <= set(results["examples"][0])
    assert (job.dir / "adapter.zip").is_file()

    # After a "restart": the jobs are listed again, with their adapters.
    listed = {j["id"]: j for j in list_jobs(home)}
    assert listed[job.id]["status"] == "completed" and listed[job.id]["has_adapter"]
    assert listed[other.id]["status"] == "created"
    # Nothing was written outside home.
    assert {p.name for p in tmp_path.iterdir()} == {"home"}


def running_lock_free(home: Path) -> bool:
    return JobLock(jobs_root(home)).holder() is None


def test_old_jobs_are_pruned_but_finished_adapters_stay(tmp_path: Path) -> None:
    """A time to live bounds the disk the jobs use; a finished fine-tune is never lost."""
    from vitdemo.finetune.jobs import prune_jobs

    def job_with(status: str, adapter: bool, running_pid: int | None = None) -> Job:
        job = new_job(tmp_path, model="m", config={})
        (job.data_dir / "image.png").write_bytes(b"x" * 1000)
        job.records_path.write_text("{}\n")
        (job.checkpoints_dir / "step-000010").mkdir(parents=True)
        if adapter:
            job.adapter_dir.mkdir()
            (job.adapter_dir / "adapter_config.json").write_text("{}")
        job.update(status=status, pid=running_pid)
        time.sleep(0.01)  # distinct job ids (they carry the time)
        return job

    done = job_with("completed", adapter=True)
    failed = job_with("failed", adapter=False)
    running = job_with("running", adapter=False, running_pid=os.getpid())
    running.update(pid_marker="pytest")  # this very process counts as its live runner
    week_later = time.time() + 8 * 24 * 3600

    assert prune_jobs(tmp_path, ttl_hours=0, now=week_later) == []  # 0 = keep forever
    assert prune_jobs(tmp_path, ttl_hours=168) == []  # nothing is old yet
    pruned = prune_jobs(tmp_path, ttl_hours=168, now=week_later)
    assert len(pruned) == 2, pruned
    assert not failed.dir.exists()
    assert (done.adapter_dir / "adapter_config.json").is_file() and done.read()["status"] == "completed"
    assert not done.data_dir.exists() and not done.checkpoints_dir.exists() and not done.records_path.exists()
    assert running.data_dir.is_dir() and running.read()["status"] == "running"
    listed = {j["id"]: j for j in list_jobs(tmp_path)}
    assert listed[done.id]["has_adapter"] and failed.id not in listed
    assert prune_jobs(tmp_path, ttl_hours=168, now=week_later + 3600 * 24 * 30) == []  # pruned once only


def test_a_job_asked_to_stop_whose_process_is_gone_reads_stopped_not_failed(tmp_path: Path) -> None:
    """Stop pressed in the runner's first moments (before it handles SIGTERM) ends it at once:
    the user asked for that, so the job is stopped, and says there is nothing to resume."""
    from vitdemo.finetune import service as svc
    from vitdemo.finetune.owners import Owner

    job = new_job(tmp_path, model="m", config={}, owner="user:a")
    job.update(status="stopping", pid=2 ** 22 + 12345)
    assert job.refresh()["status"] == "stopped"
    line = svc.progress(SimpleNamespace(home=tmp_path), job.id, Owner("user:a")).message
    assert line.startswith("Stopped at step 0") and "nothing to resume" in line
    job.update(status="running", pid=2 ** 22 + 12345)
    assert job.refresh()["status"] == "failed"  # not asked to stop: it died
