"""A data-parallel fine-tune whose second process fails says why in the job, not only that the
first process lost its connection: every process but the first writes nothing else to the job,
so it leaves its error in a file the first one reads."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ft_helpers import make_job
from vitdemo.finetune.runner import run_job


@pytest.fixture
def keep_signal_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _as_process(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_the_first_process_reports_the_other_processes_error(tmp_path: Path, tiny_llava_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              keep_signal_handlers) -> None:
    job = make_job(tmp_path / "home", tiny_llava_dir, max_steps=2)
    job.records_path.unlink()  # every process fails to read the records
    monkeypatch.setattr("vitdemo.finetune.runner.OTHER_ERRORS_WAIT_S", 0.5)

    _as_process(monkeypatch, rank=1, world=2)
    with pytest.raises(Exception) as second:
        run_job(job.dir)
    left = job.dir / "failed-process-1.txt"
    assert left.is_file() and str(second.value) in left.read_text()
    assert job.refresh().get("status") != "failed"  # the second process writes nothing else to the job

    _as_process(monkeypatch, rank=0, world=2)
    with pytest.raises(Exception):
        run_job(job.dir)
    data = job.refresh()
    assert data["status"] == "failed"
    assert data["error"].startswith(f"process 1: {left.read_text()}") and "(then the first process: " in data["error"]

    # One process alone looks for no other's error, even with an old one still in the folder.
    _as_process(monkeypatch, rank=0, world=1)
    with pytest.raises(Exception):
        run_job(job.dir)
    assert not job.refresh()["error"].startswith("process ")
