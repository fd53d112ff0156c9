"""The fine-tune queue with real runner processes: a job started while another trains waits
its turn and starts by itself; a queued job can be taken out; the page's service queues
instead of refusing; a resume waits too."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_helpers import make_job, wait_for
from types import SimpleNamespace
from vitdemo.errors import InputError
from vitdemo.finetune import job_queue
from vitdemo.finetune import service as svc
from vitdemo.finetune.jobs import running_job, start_job
from vitdemo.finetune.owners import Owner

SETTINGS = lambda home: SimpleNamespace(home=home, job_ttl_hours=0)  # noqa: E731 - what service reads
TEACHER = Owner("user:teacher", teacher=True)  # may change any job


def _events(job, kind: str) -> list[dict]:
    return [e for e in job.events() if e["event"] == kind]


@pytest.mark.slow
def test_queued_jobs_start_in_turn_and_a_cancelled_one_never(tmp_path: Path, tiny_llava_dir: Path) -> None:
    home = tmp_path / "home"
    first = make_job(home, tiny_llava_dir, max_steps=12, batch_size=4)
    second = make_job(home, tiny_llava_dir, max_steps=2, batch_size=4)
    dropped = make_job(home, tiny_llava_dir, max_steps=2, batch_size=4)
    start_job(home, first)
    svc._start_or_queue(SETTINGS(home), second)  # what Start does: the slot is taken, so it queues
    svc._start_or_queue(SETTINGS(home), dropped)
    assert second.read()["status"] == dropped.read()["status"] == "queued"
    assert job_queue.position(home, second.id) == 1 and job_queue.position(home, dropped.id) == 2
    taken = svc.stop(SETTINGS(home), dropped.id, owner=TEACHER)  # Stop on a queued job takes it out
    assert taken["taken_out_of_queue"] and dropped.read()["status"] == "cancelled"
    assert job_queue.position(home, dropped.id) is None
    assert job_queue.cancel(dropped) is False  # not queued any more

    wait_for(lambda: second.refresh()["status"] == "completed", 300, "the queued job to run and finish")
    assert first.refresh()["status"] == "completed"
    first_done = _events(first, "done")[-1]["time"]
    assert _events(second, "train_start")[0]["time"] > first_done  # it waited for the first to end
    assert dropped.refresh()["status"] == "cancelled" and not _events(dropped, "train_start")
    assert running_job(home) is None and job_queue.queued_ids(home) == []


def test_start_next_skips_cancelled_and_reports_a_job_that_cannot_start(tmp_path: Path) -> None:
    from vitdemo.finetune.jobs import new_job

    cancelled = new_job(tmp_path, model="m", config={})
    job_queue.enqueue(cancelled)
    assert job_queue.cancel(cancelled) and cancelled.read()["status"] == "cancelled"
    broken = new_job(tmp_path, model="m", config={})  # no checked records: it cannot start
    job_queue.enqueue(broken)
    assert job_queue.start_next(tmp_path) is None
    data = broken.read()
    assert data["status"] == "failed" and "could not start from the queue" in data["error"]
    assert "check the data first" in data["error"]
    assert cancelled.read()["status"] == "cancelled"  # never started


def test_a_queued_resume_taken_out_of_the_queue_can_resume_again(tmp_path: Path) -> None:
    from vitdemo.finetune.jobs import new_job

    job = new_job(tmp_path, model="m", config={})
    job.update(status="stopped")
    job_queue.enqueue(job, resume=True)
    assert job_queue.cancel(job) and job.read()["status"] == "stopped"


def test_resume_without_a_checkpoint_is_refused_before_queueing(tmp_path: Path) -> None:
    from vitdemo.finetune.jobs import new_job

    job = new_job(tmp_path, model="m", config={})
    job.update(status="stopped")
    with pytest.raises(InputError, match="no checkpoint"):
        svc.resume(SETTINGS(tmp_path), job.id, owner=TEACHER)
    assert job.read()["status"] == "stopped"
