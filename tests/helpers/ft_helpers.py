"""Small datasets and model helpers for the fine-tune tests (tiny, seeded, no network)."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40)}
CHINESE = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}


def write_color_dataset(folder: Path, n: int = 40, seed: int = 0, chinese: bool = True) -> Path:
    """LLaVA-format dataset: a shape of one colour on grey -> its colour name; returns the folder."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        img = Image.new("RGB", (32, 32), (200, 200, 200))
        x0, y0 = (int(v) for v in rng.integers(0, 12, 2))
        ImageDraw.Draw(img).ellipse((x0, y0, x0 + 20, y0 + 20), fill=COLORS[color])
        img.save(folder / "images" / f"{i:03d}.png")
        answer = CHINESE[color] if chinese else color
        records.append({"id": f"{i:03d}", "image": f"images/{i:03d}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the circle? Answer in Chinese."},
            {"from": "gpt", "value": answer}]})
    (folder / "data.json").write_text(json.dumps(records, ensure_ascii=False, indent=1))
    return folder


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder))
    return out


def confident_head(model, scale: float = 30.0):
    """Scale the output layer of a random model to a trained model's size.

    A random model's output weights (std 0.02) after the final RMSNorm cap every logit near
    +-1.3, so no adapter can make it confident and its loss cannot fall far. Real (trained)
    models do not have this limit; scaling the head lets a tiny model show learning.
    """
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def make_job(home: Path, model_dir: Path, n: int = 24, **config):
    """A job folder with checked records of the colour dataset, ready to start."""
    from vitdemo.finetune.data.records import load_dataset, save_records
    from vitdemo.finetune.jobs import new_job

    job = new_job(home, model=str(model_dir), config=config, quant="none", device="cpu")
    write_color_dataset(job.data_dir, n=n)
    report = load_dataset(job.data_dir)
    save_records(report.usable_records(), report, job.records_path)
    return job


def wait_for(predicate, timeout: float, what: str):
    """predicate()'s first truthy value, polled; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
