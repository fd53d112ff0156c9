"""`python -m vitdemo ask` end to end, in a subprocess, as a script would call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vitdemo.paths import REPO_ROOT

import pytest
import torch
from PIL import Image

ROOT = REPO_ROOT


def _run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VITDEMO_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vitdemo", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "red.png"
    Image.new("RGB", (40, 40), "red").save(path)
    return path


def test_ask_json(tiny_llava_dir: Path, png: Path, tmp_path: Path) -> None:
    r = _run("ask", "--image", str(png), "--question", "What is red?", "--model", str(tiny_llava_dir),
             "--json", "--max-new-tokens", "8", home=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["answer"].strip() and out["model"] == str(tiny_llava_dir)
    assert (out["device"], out["quant"], out["adapter"]) == ("cpu", "none", None)
    assert 1 <= out["new_tokens"] <= 8 and out["input_tokens"] > 16
    plain = _run("ask", "--image", str(png), "--question", "What is red?", "--model", str(tiny_llava_dir),
                 "--max-new-tokens", "8", home=tmp_path)
    assert plain.returncode == 0 and plain.stdout.strip() == out["answer"]


@pytest.mark.parametrize("case", ["not_image", "empty_question", "bad_model", "missing_file"])
def test_ask_errors_are_one_line_on_stderr(case: str, tiny_llava_dir: Path, png: Path, tmp_path: Path) -> None:
    image, question, model = str(png), "What?", str(tiny_llava_dir)
    if case == "not_image":
        image = str(tmp_path / "notes.png")
        Path(image).write_text("hello")
    elif case == "empty_question":
        question = "  "
    elif case == "bad_model":
        model = "no-such-org/no-such-model"
    elif case == "missing_file":
        image = str(tmp_path / "missing.png")
    r = _run("ask", "--image", image, "--question", question, "--model", model, home=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert r.stdout == ""


def test_default_model_is_built_when_classroom_model_is_absent(png: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from vitdemo.paths import CLASSROOM_MODEL_DIR
    from vitdemo.core import loading
    from vitdemo.core.fallback import FALLBACK_DIRNAME

    monkeypatch.setattr("vitdemo.paths.CLASSROOM_MODEL_DIR", tmp_path / "no-classroom")
    source = loading.resolve_model_source(None, tmp_path / "home")
    assert source.endswith(FALLBACK_DIRNAME) and (Path(source) / "config.json").is_file()
    assert loading.resolve_model_source(None, tmp_path / "home") == source  # built once, reused
    assert loading.resolve_model_source("some/model", tmp_path / "home") == "some/model"
    monkeypatch.undo()
    if (CLASSROOM_MODEL_DIR / "config.json").is_file():
        assert loading.resolve_model_source(None, tmp_path / "home") == str(CLASSROOM_MODEL_DIR)


BAD_BUILD_FLAGS = [(["--device", "gpu"], "not a device name"), (["--data-workers", "-1"], "--data-workers")]
if not torch.cuda.is_available():  # CI: asking for the GPU it lacks (elsewhere this would train)
    BAD_BUILD_FLAGS.append((["--device", "cuda"], "no CUDA GPU"))


@pytest.mark.parametrize("flags, message", BAD_BUILD_FLAGS)
def test_build_classroom_rejects_a_bad_device_before_training(flags: list[str], message: str, tmp_path: Path) -> None:
    r = _run("build-classroom", "--out", str(tmp_path / "model"), *flags, home=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip().startswith("error: ") and message in r.stderr, r.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.building").exists()
