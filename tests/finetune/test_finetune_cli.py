"""`python -m vitdemo finetune` and `eval` (single process), as a person would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ft_helpers import write_color_dataset, zip_folder
from vitdemo.__main__ import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return zip_folder(write_color_dataset(root / "colors", n=30), root / "colors.zip")


def test_finetune_then_eval(data_zip: Path, tiny_llava_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VITDEMO_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    rc = main(["finetune", "--data", str(data_zip), "--out", str(out), "--model", str(tiny_llava_dir),
               "--max-steps", "6", "--rank", "4", "--lr", "5e-3", "--batch-size", "4", "--json",
               "--merge", str(tmp_path / "merged")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("steps", "seconds", "train_loss", "eval_before", "eval_after"):
        assert key in summary, key
    assert summary["steps"] == 6 and summary["n_eval"] == 3 and summary["n_train"] == 27
    assert summary["eval_after"]["n"] == 3 and 0 <= summary["eval_after"]["exact_match"] <= 1
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert (tmp_path / "merged" / "config.json").is_file()
    assert not (tmp_path / "home").exists()  # a --data/--out run writes only into --out

    rc = main(["eval", "--data", str(data_zip), "--model", str(tiny_llava_dir), "--adapter", str(out / "adapter"),
               "--split", "heldout", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 3 and result["exact_match"] == summary["eval_after"]["exact_match"]
    assert result["adapter"] == str(out / "adapter")


def test_finetune_refuses_bad_data(tmp_path: Path, tiny_llava_dir: Path, capsys) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"image": "missing.png", "instruction": "q", "response": "a"}\n')
    rc = main(["finetune", "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(tiny_llava_dir),
               "--max-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.png' not found" in err and "line 1" in err
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    rc = main(["finetune", "--data", str(fake), "--out", str(tmp_path / "o2"), "--model", str(tiny_llava_dir)])
    assert rc == 2 and "not a zip archive" in capsys.readouterr().err
    rc = main(["finetune", "--data", str(data), "--out", str(tmp_path / "o3"), "--model", str(tiny_llava_dir),
               "--set", "rnak=3"])
    assert rc == 2 and "unknown fine-tune setting(s): rnak" in capsys.readouterr().err
