"""Write the fine-tune example datasets to assets/datasets/ (seeded, repeatable).

Each dataset teaches the classroom model a skill it does not have, on generated scenes:
- chinese_colors: "What color is the circle? Answer in Chinese." -> "红色" (a new answer
  language; LLaVA JSON format).
- shape_at: "Which shape is at the top left?" -> "circle" (a new question form: the
  inverse of "where"; messages JSONL format, as TRL writes it).
- row: "Which row is the red circle in?" -> "top row" (a new property; simple CSV).
Each zip holds <name>/images/*.jpg (64 px, the model's input size) and one annotation file.
Records of the new skill are split into train and "split": "test" (held out, scored before
and after). Train also holds "replay" records: the classroom model's own questions with its
own kind of answer, so that it learns when to use the new skill and keeps the old ones
(without them it answers every question with the new skill: measured, see docs/finetune.md).

Run: python scripts/make_example_datasets.py [--records N] [--only NAME]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitdemo.classroom.scenes import POSITIONS, Scene, generate_scene, questions_for  # noqa: E402

OUT = ROOT / "assets" / "datasets"
SEED = 20261129
CHINESE = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
ROWS = ("top row", "middle row", "bottom row")

QAFn = Callable[[Scene, np.random.Generator], "tuple[str, str] | None"]


def chinese_colors(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    objs = scene.objects
    unique = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
    if not unique:
        return None
    o = unique[int(rng.integers(len(unique)))]
    return f"What color is the {o.shape}? Answer in Chinese.", CHINESE[o.color]


def shape_at(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    return f"Which shape is at the {POSITIONS[o.cell]}?", o.shape


def row(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    return f"Which row is the {o.color} {o.shape} in?", ROWS[o.cell // 3]


SKILLS: dict[str, tuple[QAFn, str, int]] = {
    # name: (question/answer maker, annotation format, default record count of the new skill)
    "chinese_colors": (chinese_colors, "llava", 200),
    "shape_at": (shape_at, "messages", 200),
    "row": (row, "csv", 200),
}
HELD_OUT = 40  # new-skill records marked "split": "test"
REPLAY = 100  # records of the original questions, in train only


def replay(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    qas = questions_for(scene, rng, canonical=True)
    qa = qas[int(rng.integers(len(qas)))]
    return qa.question, qa.answer


def _jpeg(image: Image.Image) -> bytes:
    small = image.resize((64, 64), Image.LANCZOS)  # what the processor would do anyway
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


Row = tuple[str, str, str, str]  # image path, question, answer, split


def make(name: str, n_records: int, seed: int = SEED, n_replay: int = REPLAY,
         n_held_out: int = HELD_OUT) -> tuple[list[Row], dict[str, bytes]]:
    """(image path, question, answer, split) rows and the image files, for one skill."""
    qa_fn = SKILLS[name][0]
    rng = np.random.default_rng([seed, list(SKILLS).index(name)])
    rows: list[Row] = []
    files: dict[str, bytes] = {}
    plan = ["new"] * n_records + ["replay"] * n_replay
    order = rng.permutation(len(plan))
    n_new = 0
    for k in order:
        kind = plan[int(k)]
        while True:
            scene = generate_scene(rng, size=192)
            qa = qa_fn(scene, rng) if kind == "new" else replay(scene, rng)
            if qa is not None:
                break
        split = "train"
        if kind == "new":
            n_new += 1
            split = "test" if n_new <= n_held_out else "train"
        path = f"images/{len(rows):04d}.jpg"
        files[path] = _jpeg(scene.image)
        rows.append((path, *qa, split))
    return rows, files


def annotation(rows: list[Row], fmt: str) -> tuple[str, bytes]:
    if fmt == "llava":
        data = [{"id": f"{i:04d}", "image": img, "split": split,
                 "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}
                for i, (img, q, a, split) in enumerate(rows)]
        return "data.json", (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()
    if fmt == "messages":
        lines = [json.dumps({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                                          {"role": "assistant", "content": [{"type": "text", "text": a}]}],
                             "images": [img], "split": split}, ensure_ascii=False) for img, q, a, split in rows]
        return "train.jsonl", ("\n".join(lines) + "\n").encode()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "instruction", "response", "split"])
    writer.writerows(rows)
    return "pairs.csv", buf.getvalue().encode()


def write_zip(name: str, n_records: int, out_dir: Path = OUT, seed: int = SEED, n_replay: int = REPLAY,
              suffix: str = "") -> Path:
    rows, files = make(name, n_records, seed, n_replay)
    ann_name, ann = annotation(rows, SKILLS[name][1])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}{suffix}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in [(ann_name, ann), *files.items()]:
            info = zipfile.ZipInfo(f"{name}/{member}", date_time=(2026, 11, 29, 0, 0, 0))  # repeatable bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, help="records per dataset (default: per skill)")
    parser.add_argument("--only", choices=list(SKILLS), help="write one dataset")
    parser.add_argument("--replay", type=int, default=REPLAY, help="original-question records added to train")
    parser.add_argument("--suffix", default="", help="added to the zip names (variants for experiments)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for name, (_, fmt, default_n) in SKILLS.items():
        if args.only and name != args.only:
            continue
        n = args.records or default_n
        path = write_zip(name, n, args.out, n_replay=args.replay, suffix=args.suffix)
        print(f"{path}: {n} new-skill records ({HELD_OUT} held out) + {args.replay} replay ({fmt}), "
              f"{path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
