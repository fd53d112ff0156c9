"""What the classroom model's wrong "where" answers name: another object's cell, or not.

    python research/where_errors.py [--model assets/classroom] [--scenes 300]

Asks the canonical "Where is the {color} {shape}?" about one object per held-out scene
(the eval's seed) and sorts the wrong answers: the cell of another object in the scene
(the model picked the wrong object; and what that object shares with the one asked
about), a neighbouring empty cell, a farther empty cell, or not a position. Also the error rate for objects that share their colour or shape with
another object ("confusable") against the others, by the size of the object asked about
(its box's longer side against the cell's: small < 60%) and by the number of objects.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "classroom")
    parser.add_argument("--scenes", type=int, default=300)
    args = parser.parse_args()

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vitdemo.classroom import evaluate, scenes

    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    items = [i for i in evaluate.held_out_items(args.scenes) if i.qa.form == "where"]
    answers = evaluate.answer_batch(model, processor, [i.scene.image for i in items], [i.qa.question for i in items])
    kinds: collections.Counter = collections.Counter()
    by_group: collections.Counter = collections.Counter()
    by_size: collections.Counter = collections.Counter()
    by_count: collections.Counter = collections.Counter()
    for item, answer in zip(items, answers):
        truth = item.qa.answer
        confusable = item.qa.target in scenes.confusable_objects(item.scene)
        group = "confusable" if confusable else "other"
        by_group[(group, answer == truth)] += 1
        asked = item.scene.objects[item.qa.target]
        cell_side = item.scene.image.size[0] / 3
        side = max(asked.box[2] - asked.box[0], asked.box[3] - asked.box[1])
        by_size[("small" if side < 0.6 * cell_side else "large", answer == truth)] += 1
        by_count[(str(len(item.scene.objects)), answer == truth)] += 1
        if answer == truth:
            continue
        others = {o.position for o in item.scene.objects if o.position != truth}
        if answer not in scenes.POSITIONS:
            kinds["not a position"] += 1
        elif answer in others:
            kinds["another object's cell"] += 1
            named = next(o for o in item.scene.objects if o.position == answer)
            shared = ("colour" if named.color == asked.color else "shape" if named.shape == asked.shape
                      else "nothing")
            kinds[f"  ... named object shares {shared}"] += 1
        else:
            t, a = scenes.POSITIONS.index(truth), scenes.POSITIONS.index(answer)
            near = max(abs(t // 3 - a // 3), abs(t % 3 - a % 3)) == 1
            kinds["neighbouring empty cell" if near else "farther empty cell"] += 1

    def error_rate(group: str, counts: collections.Counter = by_group) -> float | None:
        n = counts[(group, True)] + counts[(group, False)]
        return round(counts[(group, False)] / n, 3) if n else None

    print(json.dumps({"model": str(args.model), "where_questions": len(items),
                      "right": sum(by_group[(g, True)] for g in ("confusable", "other")),
                      "wrong_by_kind": dict(kinds),
                      "error_rate_confusable": error_rate("confusable"), "error_rate_other": error_rate("other"),
                      "error_rate_by_size": {g: error_rate(g, by_size) for g in ("small", "large")},
                      "error_rate_by_objects": {g: error_rate(g, by_count) for g in "1234"}}))


if __name__ == "__main__":
    main()
