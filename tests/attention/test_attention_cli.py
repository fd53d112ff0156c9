"""`python -m vitdemo attend` end to end, in a subprocess like a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vitdemo.paths import REPO_ROOT

import numpy as np
from PIL import Image

ROOT = REPO_ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vitdemo", "attend", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_attend_json_and_pngs(tiny_llava_dir, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(image)
    out = tmp_path / "maps"
    proc = _run("--model", str(tiny_llava_dir), "--image", str(image), "--question", "What colour is it?",
                "--json", "--out", str(out), "--max-new-tokens", "5", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert isinstance(payload["answer"], str)
    assert len(payload["tokens"]) == len(payload["maps"]) >= 1
    rows, cols = payload["grid"][0]
    assert (rows, cols) == (4, 4)  # tiny LLaVA: 32 px / 8 px patches
    for grid_map in payload["maps"]:
        arr = np.asarray(grid_map, dtype=float)
        assert arr.shape == (rows, cols)
        assert arr.min() >= 0 and abs(arr.sum() - 1) < 1e-3  # a distribution over the image's cells
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(payload["tokens"])
    assert Image.open(pngs[0]).width >= 80
    saved = np.load(out / "maps.npz")
    assert saved["answer_attn"].shape[0] == len(payload["tokens"])


def test_attend_prints_answer_and_fails_in_one_line(tiny_llava_dir, tmp_path):
    image = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (30, 30, 200)).save(image)
    ok = _run("--model", str(tiny_llava_dir), "--image", str(image), "--question", "What is it?",
              "--max-new-tokens", "3", "--device", "cpu")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip()  # the answer text
    bad = _run("--model", str(tiny_llava_dir), "--image", str(tmp_path / "missing.png"), "--question", "hi")
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("error:")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    bad2 = _run("--model", str(tiny_llava_dir), "--image", str(not_image), "--question", "hi")
    assert bad2.returncode != 0 and len(bad2.stderr.strip().splitlines()) == 1
