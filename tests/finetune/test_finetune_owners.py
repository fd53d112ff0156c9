"""Whose fine-tune jobs a page sees and changes (vitdemo.finetune.owners and the service),
the time estimate of a resumed run, and the Fine-tune page's texts. No model needed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vitdemo.errors import InputError
from vitdemo.finetune import owners
from vitdemo.finetune import service as svc
from vitdemo.finetune.jobs import new_job
from vitdemo.learn.compare import available_adapters


def _settings(home: Path) -> SimpleNamespace:
    return SimpleNamespace(home=home, job_ttl_hours=0)


def _finished_job(home: Path, owner: owners.Owner | None, **extra) -> str:
    job = new_job(home, model="m", config={}, owner=owner.id if owner else None)
    (job.adapter_dir).mkdir()
    (job.adapter_dir / "adapter_config.json").write_text("{}")
    job.update(status="completed", summary={"steps": 1, "seconds": 1, "samples_per_s": 1}, **extra)
    time.sleep(1.05)  # job ids carry the second they were made in
    return job.id


@pytest.fixture()
def two_users():
    return (owners.owner_for(owners.new_token(), None), owners.owner_for(owners.new_token(), None))


def test_each_browser_sees_only_its_own_jobs(tmp_path: Path, two_users) -> None:
    alice, bob = two_users
    settings = _settings(tmp_path)
    a_job = _finished_job(tmp_path, alice)
    b_job = _finished_job(tmp_path, bob)
    assert [v for _, v in svc.job_choices(settings, alice)] == [a_job]
    assert [v for _, v in svc.job_choices(settings, bob)] == [b_job]
    with pytest.raises(InputError, match="no job"):
        svc.progress(settings, a_job, bob)
    with pytest.raises(InputError, match="no job"):
        svc.adapter_paths(settings, a_job, bob)
    with pytest.raises(InputError, match="no job"):
        svc.share(settings, a_job, bob)
    assert svc.progress(settings, a_job, alice).status == "completed"
    # Learn section 4 lists the shipped examples and only the asker's own jobs
    a_list = [label for label, _ in available_adapters(tmp_path, alice)]
    assert any(a_job in label for label in a_list) and not any(b_job in label for label in a_list)
    assert not any(label.startswith("job") for label, _ in available_adapters(tmp_path, None))


def test_a_shared_job_is_everyones_to_see_but_only_its_owners_to_change(tmp_path: Path, two_users) -> None:
    alice, bob = two_users
    settings = _settings(tmp_path)
    a_job = _finished_job(tmp_path, alice)
    svc.share(settings, a_job, alice)
    assert a_job in [v for _, v in svc.job_choices(settings, bob)]
    assert "shared" in dict((v, k) for k, v in svc.job_choices(settings, bob))[a_job]
    assert any(a_job in label for label, _ in available_adapters(tmp_path, bob))
    assert svc.adapter_paths(settings, a_job, bob)[0].is_dir()
    with pytest.raises(InputError, match="only its owner"):
        svc.share(settings, a_job, bob, False)
    svc.share(settings, a_job, alice, False)
    assert svc.job_choices(settings, bob) == []


def test_the_teacher_sees_and_shares_every_job(tmp_path: Path, two_users) -> None:
    alice, _ = two_users
    settings = _settings(tmp_path)
    a_job = _finished_job(tmp_path, alice)
    cli_job = _finished_job(tmp_path, None)  # made by the command line: nobody's but the teacher's
    teacher = owners.owner_for(None, "teacher", teacher_user="teacher")
    student = owners.owner_for(None, "student", teacher_user="teacher")
    assert teacher.teacher and not student.teacher
    assert sorted(v for _, v in svc.job_choices(settings, teacher)) == sorted([a_job, cli_job])
    assert svc.job_choices(settings, student) == []
    svc.share(settings, cli_job, teacher)
    assert [v for _, v in svc.job_choices(settings, student)] == [cli_job]


def test_a_session_token_is_not_stored_and_cannot_be_made_up() -> None:
    token = owners.new_token()
    owner = owners.owner_for(token, None)
    assert token not in owner.id and owner.id.startswith("browser:")
    assert owners.owner_for(token, None) == owner  # the same browser after a reload
    assert owners.owner_for(owners.new_token(), None) != owner
    for bad in (None, "", "abc", owner.id, owner.id.split(":", 1)[1], token + "x", 42):
        with pytest.raises(InputError, match="reload the page"):
            owners.owner_for(bad, None)
    # a login wins over the browser token
    assert owners.owner_for(token, "alice").id == "user:alice"


def _write_events(job, events: list[dict]) -> None:
    job.progress_path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_the_time_left_after_resume_counts_only_the_resumed_run(tmp_path: Path, two_users) -> None:
    """Run 1: steps 1-10 at 1 s/step, stopped; resumed 200 s later, steps 11-15 at 1 s/step:
    about 85 s are left (100 steps), not the 200 s pause spread over the last 20 steps."""
    alice, _ = two_users
    job = new_job(tmp_path, model="m", config={}, owner=alice.id)
    # a live process whose command line holds the marker: this test's own
    job.update(status="running", pid=os.getpid(), pid_marker="pytest")
    t0 = 1000.0
    events = [{"event": "loading", "time": t0}, {"event": "train_start", "time": t0 + 1, "step": 0, "total_steps": 100}]
    events += [{"event": "step", "time": t0 + 1 + s, "step": s, "total_steps": 100, "loss": 1.0} for s in range(1, 11)]
    t1 = t0 + 211
    events += [{"event": "loading", "time": t1}, {"event": "resumed", "time": t1 + 1, "step": 10},
               {"event": "train_start", "time": t1 + 2, "step": 10, "total_steps": 100}]
    events += [{"event": "step", "time": t1 + 2 + s - 10, "step": s, "total_steps": 100, "loss": 1.0}
               for s in range(11, 16)]
    _write_events(job, events)
    p = svc.progress(_settings(tmp_path), job.id, alice)
    assert p.eta_s == pytest.approx(85.0, abs=1.0), p.message
    assert "about 85 s left" in p.message


def test_a_job_with_nothing_held_out_says_why_there_is_no_table(tmp_path: Path, two_users) -> None:
    alice, _ = two_users
    job = new_job(tmp_path, model="m", config={"eval_fraction": 0.1}, owner=alice.id)
    job.update(status="completed", summary={"steps": 60, "seconds": 3, "samples_per_s": 20})
    _write_events(job, [{"event": "preparing", "time": 1.0, "n_train": 2, "n_eval": 0}])
    p = svc.progress(_settings(tmp_path), job.id, alice)
    assert p.results is None
    assert "No before/after table" in p.results_note and "2 records" in p.results_note
    assert "held-out share" in p.results_note


def test_the_merged_model_is_offered_as_a_download_without_server_paths(tmp_path: Path) -> None:
    merged = tmp_path / "jobs" / "x" / "merged"
    merged.mkdir(parents=True)
    (merged / "model.safetensors").write_bytes(b"0" * 1000)
    zipped = svc.merged_zip(merged)
    assert zipped is not None and zipped.is_file()
    text = svc.merge_markdown(merged, zipped)
    assert str(tmp_path) not in text and "download" in text
    assert svc.merged_zip(merged, max_mb=0.0001) is None
    big = svc.merge_markdown(merged, None)
    assert "too big" in big and str(tmp_path) not in big


def test_the_busy_note_says_new_jobs_queue_and_whose_job_runs(tmp_path: Path, two_users, monkeypatch) -> None:
    from vitdemo.finetune import job_queue

    alice, bob = two_users
    job = new_job(tmp_path, model="m", config={}, owner=alice.id)
    monkeypatch.setattr(svc, "running_job", lambda home: job.id)
    mine = svc.running_job_note(_settings(tmp_path), alice)
    theirs = svc.running_job_note(_settings(tmp_path), bob)
    assert "waits in a queue" in mine and job.id in mine and "waiting" not in mine
    assert "another user's job" in theirs and job.id not in theirs
    job_queue.enqueue(new_job(tmp_path, model="m", config={}, owner=bob.id))
    assert "1 job waiting" in svc.running_job_note(_settings(tmp_path), alice)


def test_plural() -> None:
    assert svc.plural(1, "record") == "1 record" and svc.plural(2, "record") == "2 records"
    assert svc.plural(0, "warning") == "0 warnings"


def _one_bad_dataset(folder: Path) -> Path:
    """Three JSONL records, the last with an image that is not there."""
    from PIL import Image

    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16), "red").save(folder / name)
    rows = [{"image": "a.png", "instruction": "What colour?", "response": "red"},
            {"image": "b.png", "instruction": "What colour?", "response": "red"},
            {"image": "missing.png", "instruction": "What colour?", "response": "red"}]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_start_only_when_the_data_can_train_and_the_report_reads_right(tmp_path: Path, two_users) -> None:
    from vitdemo.finetune.data.records import load_dataset

    alice, _ = two_users
    report = load_dataset(_one_bad_dataset(tmp_path / "data"))
    assert not report.ok and len(report.good) == 2
    job = new_job(tmp_path / "home", model="m", config={}, owner=alice.id)
    checked = svc.CheckResult(job, report)
    assert not svc.can_start(checked, drop_bad=False)  # a bad record and "drop" off: Start is off
    assert svc.can_start(checked, drop_bad=True)
    text = svc.report_markdown(report)
    assert "the 2 good records only" in text and "(s)" not in text and "good ones" not in text
    assert "**1 problem** in 1 record" in text and "**3 records**" in text
    job.update(status="running")
    assert not svc.can_start(checked, drop_bad=True)  # started already: Resume, not Start
    assert not svc.can_start(None, drop_bad=True)


def test_a_shared_job_shows_as_not_changeable_to_others(tmp_path: Path, two_users) -> None:
    alice, bob = two_users
    settings = _settings(tmp_path)
    a_job = _finished_job(tmp_path, alice)
    svc.share(settings, a_job, alice)
    assert svc.progress(settings, a_job, alice).changeable
    assert not svc.progress(settings, a_job, bob).changeable  # no Stop/Resume/Merge/share for Bob
    with pytest.raises(InputError, match="only its owner"):
        svc.merge(settings, a_job, bob)


def test_a_shared_class_login_leaves_jobs_to_each_browser(tmp_path: Path) -> None:
    """`--auth class:pw` (everyone the same login) must not make every job everyone's;
    personal logins (an auth file of several users) own their jobs, the first is the teacher."""
    from vitdemo.ui import identity

    one = SimpleNamespace(auth_pairs=[("class", "pw")])
    many = SimpleNamespace(auth_pairs=[("teacher", "a"), ("ann", "b"), ("ben", "c")])
    t1, t2 = owners.new_token(), owners.new_token()
    as_class = SimpleNamespace(username="class")
    assert identity.owner(one, t1, as_class) != identity.owner(one, t2, as_class)
    assert not identity.owner(one, t1, as_class).teacher
    assert identity.owner(many, t1, SimpleNamespace(username="ann")).id == "user:ann"
    assert identity.owner(many, t2, SimpleNamespace(username="ann")).id == "user:ann"  # any browser
    assert identity.owner(many, None, SimpleNamespace(username="teacher")).teacher
    assert identity.owner(SimpleNamespace(auth_pairs=[]), t1, None).id.startswith("browser:")
