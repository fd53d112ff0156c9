"""The retention guard and the forgetting report on tiny seeded models (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ft_helpers import write_color_dataset, zip_folder
from vitdemo.errors import InputError
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.forgetting import prompts_from_text, retention_notes, retention_row, retention_warning

torch.set_num_threads(1)


@pytest.mark.parametrize("change, words", [
    ({"probe_prompts": [""]}, "probe prompt 1 is empty"),
    ({"probe_prompts": ["What color?", "   "]}, "probe prompt 2 is empty"),
    ({"probe_prompts": ["x" * 301]}, "probe prompt 1 has 301 characters: at most 300"),
    ({"probe_prompts": ["q?"] * 21}, "21 probe prompts: at most 20"),
    ({"probe_prompts": "Describe the image."}, "must be a list of questions"),
    ({"retention_weight": 10.5}, "retention_weight must be in [0, 10]"),
    ({"retention_weight": -0.1}, "retention_weight must be in [0, 10]"),
    ({"retention_mode": "ewc"}, "retention_mode must be one of replay, kl"),
    ({"probe_set": "mine"}, "probe_set must be one of auto, classroom, generic"),
])
def test_bad_guard_settings_are_refused_with_a_message(change: dict, words: str) -> None:
    with pytest.raises(InputError) as err:
        FinetuneConfig.from_dict(change)
    assert words in str(err.value)


def test_guard_is_on_by_default_and_can_be_turned_off() -> None:
    assert FinetuneConfig().retention_weight > 0
    FinetuneConfig.from_dict({"retention_weight": 0.0, "probe_prompts": ["What color is the circle?"]})


def test_cli_refuses_bad_probe_prompt_before_loading(tmp_path: Path, capsys) -> None:
    from vitdemo.__main__ import main

    data = zip_folder(write_color_dataset(tmp_path / "d", n=10), tmp_path / "d.zip")
    rc = main(["finetune", "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "no-model"),
               "--probe-prompt", "  "])
    assert rc == 2 and "probe prompt 1 is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_page_prompts_one_per_line() -> None:
    assert prompts_from_text("What color?\n\n  Is it round?  \n") == ["What color?", "Is it round?"]
    assert prompts_from_text(None) == []


def test_warning_below_90_percent_says_what_to_do() -> None:
    report = {"n": 50, "agreement": 0.62, "per_form": {"color": 0.1, "count": 0.9}, "guard": "off", "weight": 0.0,
              "probes": "generic prompts"}
    text = retention_warning(report)
    assert "62% of 50" in text and "'color' 10%" in text and "turn the retention guard on" in text
    on = {**report, "guard": "replay", "weight": 1.0}
    assert "raise the retention weight (now 1" in retention_warning(on)
    assert retention_warning({**on, "agreement": 0.95}) == ""
    assert retention_row(on) == "| base answers kept (50 probe questions on held-out images) | 100% | 62% |\n"
    assert "Warning" in retention_notes(on) and "Warning" not in retention_notes({**on, "agreement": 0.9})
    assert retention_row(None) == "" and retention_notes({"n": 0, "agreement": None}) == ""


@pytest.fixture(scope="module")
def tiny(tiny_llava_dir: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return tiny_llava_dir, AutoProcessor.from_pretrained(tiny_llava_dir), AutoModelForImageTextToText


@pytest.mark.parametrize("mode", ["kl", "replay"])
def test_guard_trains_on_base_answers_and_reports(mode: str, tiny, tmp_path: Path) -> None:
    from vitdemo.finetune.data.records import load_dataset
    from vitdemo.finetune.retention import is_classroom_model
    from vitdemo.finetune.trainer import Trainer, make_items, split_records

    path, processor, auto = tiny
    model = auto.from_pretrained(path)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    records = load_dataset(write_color_dataset(tmp_path / "d", n=20)).usable_records()
    cfg = FinetuneConfig(max_steps=3, rank=4, batch_size=4, retention_mode=mode, max_probes=12, report_probes=6,
                         probe_prompts=["Is it round?", "What color is the circle? Answer in Chinese."],
                         max_new_tokens=4)
    train, held = split_records(records, cfg.eval_fraction, cfg.seed)
    events: list[dict] = []
    trainer = Trainer(model, processor, make_items(processor, train), make_items(processor, held), cfg,
                      tmp_path / "job", on_event=events.append)
    assert not is_classroom_model(model) and not trainer.classroom_probes
    questions = {p.item.question for p in trainer.probes}
    assert "Is it round?" in questions and "Describe the image." in questions
    # What the upload teaches is not a probe: its answer is meant to change.
    assert "What color is the circle? Answer in Chinese." not in questions
    assert 0 < len(trainer.probes) <= 12 and all(p.item.encoded for p in trainer.probes)
    trainer.train()
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 3 and all("guard_loss" in e for e in steps)
    if mode == "kl":  # LoRA starts as a no-op: the tuned model equals its reference at step 1
        assert steps[0]["guard_loss"] == pytest.approx(0.0, abs=1e-5)
        assert steps[-1]["guard_loss"] >= 0
    after = trainer.unwrapped().get_base_model()
    for name, p in after.named_parameters():  # the reference is the base itself: no weight moved
        key = name.replace("base_layer.", "")
        if key in base and "lora_" not in name:
            assert torch.equal(p, base[key]), name
    report = trainer.retention_report()
    assert 0 < report["n"] <= 6 and 0 <= report["agreement"] <= 1 and report["guard"] == mode
    assert report["probes"] == "generic prompts" and set(report["per_form"]) <= {
        "Describe the image.", "What is in the image?", "What colors do you see?", "How many objects are there?",
        "yours: Is it round?"}


def test_guard_off_asks_no_training_probes(tiny, tmp_path: Path) -> None:
    from vitdemo.finetune.data.records import load_dataset
    from vitdemo.finetune.trainer import Trainer, make_items, split_records

    path, processor, auto = tiny
    records = load_dataset(write_color_dataset(tmp_path / "d", n=20)).usable_records()
    cfg = FinetuneConfig(max_steps=1, rank=4, batch_size=4, retention_weight=0.0, report_probes=4, max_new_tokens=4)
    train, held = split_records(records, cfg.eval_fraction, cfg.seed)
    trainer = Trainer(auto.from_pretrained(path), processor, make_items(processor, train), make_items(processor, held),
                      cfg, tmp_path / "job")
    assert trainer.probes == [] and len(trainer.report_probes) > 0
    trainer.train()
    assert trainer.retention_report()["guard"] == "off"


def test_cli_reports_retention_in_finetune_and_eval(tiny, tmp_path: Path, capsys, monkeypatch) -> None:
    from vitdemo.__main__ import main

    path = tiny[0]
    monkeypatch.setenv("VITDEMO_HOME", str(tmp_path / "home"))
    data = zip_folder(write_color_dataset(tmp_path / "d", n=20), tmp_path / "d.zip")
    out = tmp_path / "run"
    rc = main(["finetune", "--data", str(data), "--out", str(out), "--model", str(path), "--max-steps", "2",
               "--rank", "4", "--batch-size", "4", "--probe-prompt", "Is it round?", "--set", "report_probes=5",
               "--set", "max_probes=8", "--set", "max_new_tokens=4", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ret = summary["retention"]
    assert 0 < ret["n"] <= 5 and 0 <= ret["agreement"] <= 1 and ret["guard"] == "replay"
    job = json.loads((out / "job.json").read_text())
    assert job["config"]["probe_prompts"] == ["Is it round?"]
    rc = main(["eval", "--data", str(data), "--model", str(path), "--adapter", str(out / "adapter"),
               "--split", "heldout", "--probes", "5", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < result["retention"]["n"] <= 5 and 0 <= result["retention"]["agreement"] <= 1


def test_page_table_shows_retention_and_the_warning() -> None:
    from vitdemo.finetune.service import results_markdown

    summary = {"eval_before": {"n": 40, "exact_match": 0.0, "loss": 3.0}, "eval_after": {"exact_match": 0.9, "loss": 0.1},
               "steps": 200, "seconds": 30, "train_loss": 0.1,
               "retention": {"n": 160, "agreement": 0.5, "per_form": {"color": 0.1, "where": 0.9}, "guard": "off",
                             "weight": 0.0, "probes": "classroom question forms"}}
    text = results_markdown({"summary": summary, "examples": []})
    assert "| base answers kept (160 probe questions on held-out images) | 100% | 50% |" in text
    assert "| exact match | 0% | 90% |" in text and "Warning" in text and "turn the retention guard on" in text
    summary["retention"] = {**summary["retention"], "agreement": 0.97, "guard": "replay", "weight": 1.0}
    assert "Warning" not in results_markdown({"summary": summary, "examples": []})
    del summary["retention"]  # jobs from before the guard still show their table
    assert "base answers kept" not in results_markdown({"summary": summary, "examples": []})
