"""Fine-tune defaults against several new skills, on the shipped classroom model.

For each example dataset in assets/datasets/ (a new answer language, a new question form,
a new object property), one fine-tune with the page defaults; prints held-out exact match
before -> after, the classroom model's original questions before -> after, and seconds.

    .venv/bin/python bench/finetune_skills.py [--set epochs=6 --set lr=1e-3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "classroom"))
    parser.add_argument("--original", type=int, default=100, help="held-out classroom scenes for the original skills")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a FinetuneConfig default (to compare settings)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from vitdemo.classroom.evaluate import answer_batch, held_out_items
    from vitdemo.finetune.data.records import load_dataset
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.trainer import Trainer, make_items, split_records
    from vitdemo.core.loading import load_model
    from vitdemo.finetune.sft import exact_match

    torch.set_num_threads(2)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if overrides:
        print(f"settings changed from the page defaults: {overrides}", flush=True)
    original = held_out_items(args.original)

    def original_skills(model, processor) -> float:
        answers = answer_batch(model, processor, [i.scene.image for i in original], [i.qa.question for i in original])
        return sum(exact_match(a, i.qa.answer) for a, i in zip(answers, original)) / len(original)

    rows = []
    for zip_path in sorted((ROOT / "assets" / "datasets").glob("*.zip")):
        lm = load_model(args.model, device="cpu", quant="none")  # a fresh base for every skill
        with tempfile.TemporaryDirectory() as tmp:
            records = load_dataset(zip_path, extract_to=Path(tmp) / "data").usable_records()
            cfg = FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), **overrides})  # page defaults + --set
            train, held = split_records(records, cfg.eval_fraction, cfg.seed)
            trainer = Trainer(lm.model, lm.processor, make_items(lm.processor, train),
                              make_items(lm.processor, held), cfg, Path(tmp) / "job")
            old_before = original_skills(lm.model, lm.processor)
            before = trainer.evaluate()
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
            after = trainer.evaluate()
            old_after = original_skills(trainer.unwrapped(), lm.processor)
        rows.append({"dataset": zip_path.stem, "records": len(records), "held_out": len(held),
                     "steps": trainer.state.step, "seconds": round(seconds, 1),
                     "exact_match_before": round(before.exact_match, 3), "exact_match_after": round(after.exact_match, 3),
                     "original_before": round(old_before, 3), "original_after": round(old_after, 3)})
        if not args.json:
            r = rows[-1]
            print(f"{r['dataset']:<16} held-out EM {r['exact_match_before']:.1%} -> {r['exact_match_after']:.1%} "
                  f"({r['held_out']} items); original questions {r['original_before']:.1%} -> "
                  f"{r['original_after']:.1%} ({len(original)}); {r['steps']} steps in {r['seconds']} s", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
