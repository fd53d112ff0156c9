"""Write the Chat tab's example images and questions to assets/examples/ (seeded, repeatable).

Uses the classroom scene generator, so the examples are questions the classroom model
was trained to answer. Run: python scripts/make_examples.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitdemo.classroom.scenes import generate_scene, questions_for  # noqa: E402

OUT = ROOT / "assets" / "examples"
# (file name, seed, number of objects, question form)
EXAMPLES = (
    ("scene-count.png", 11, 3, "count"),
    ("scene-where.png", 12, 2, "where"),
    ("scene-color.png", 13, 3, "color"),
    ("scene-describe.png", 14, 2, "describe"),
)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    index = []
    for name, seed, n_objects, form in EXAMPLES:
        rng = np.random.default_rng(seed)
        scene = generate_scene(rng, size=192, n_objects=n_objects)
        qa = next(q for q in questions_for(scene, rng) if q.form == form)
        scene.image.save(OUT / name, optimize=True)
        index.append({"image": name, "question": qa.question, "answer": qa.answer})
    (OUT / "examples.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(index)} examples to {OUT}")


if __name__ == "__main__":
    main()
