"""The retention guard against forgetting, on the shipped classroom model, side by side.

For each example dataset *without its replay records* (only the new skill, as a user would
upload it), fine-tunes with the page defaults and each guard setting in turn (alternating,
so a loaded machine slows every setting alike) and prints: the new skill's held-out exact
match before -> after, the classroom model's original question forms on held-out scenes
(exact match against the ground truth, and as a share of the base model's own score), the
plain colour question ("What color is the circle?", the same form that chinese_colors
varies), the forgetting report's agreement on held-out probes, and seconds (training
steps; probe building apart).

    .venv/bin/python bench/retention_guard.py [--only chinese_colors] [--guards off,replay,kl] [--seeds 0,1,2,3] [--json]

`--seeds`: several runs per dataset and guard, each with its own seed (the held-out split,
the LoRA's start and the order of batches); then the mean of each figure. With 40 held-out
pairs one split moves the new skill's score by 5-10 points, so a target is judged on the mean.
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

# The new skill's records in each example zip (the rest are the replay records a user would not add).
SKILL_QUESTION = {"chinese_colors": "Answer in Chinese.", "row": "Which row is", "shape_at": "Which shape is at"}
GUARDS = {"off": {"retention_weight": 0.0}, "replay": {"retention_mode": "replay"}, "kl": {"retention_mode": "kl"}}


def skill_records(zip_path: Path, extract_to: Path) -> list:
    from vitdemo.finetune.data.records import load_dataset

    records = load_dataset(zip_path, extract_to=extract_to).usable_records()
    return [r for r in records if SKILL_QUESTION[zip_path.stem] in r.instruction]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "classroom"))
    parser.add_argument("--original", type=int, default=100, help="held-out classroom scenes for the original skills")
    parser.add_argument("--only", action="append", choices=sorted(SKILL_QUESTION), help="these datasets only")
    parser.add_argument("--guards", default="off,replay,kl", help=f"comma-separated, of {', '.join(GUARDS)}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a FinetuneConfig default for every run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="", help="comma-separated FinetuneConfig seeds (default: the config's)")
    parser.add_argument("--errors", action="store_true", help="also print the new skill's wrong held-out answers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from vitdemo.classroom.evaluate import answer_batch, held_out_items
    from vitdemo.core.loading import load_model
    from vitdemo.finetune.sft import exact_match
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.trainer import Trainer, make_items, split_records

    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    guards = args.guards.split(",")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or [None]
    original = held_out_items(args.original)

    def original_skills(model, processor) -> dict[str, float]:
        answers = answer_batch(model, processor, [i.scene.image for i in original], [i.qa.question for i in original])
        hits = [exact_match(a, i.qa.answer) for a, i in zip(answers, original)]
        color = [h for h, i in zip(hits, original) if i.qa.form == "color"]
        return {"all": sum(hits) / len(hits), "color": sum(color) / len(color)}

    rows = []
    for name in args.only or sorted(SKILL_QUESTION):
        zip_path = ROOT / "assets" / "datasets" / f"{name}.zip"
        base_scores = None
        for seed, guard in [(seed, guard) for seed in seeds for guard in guards]:
            lm = load_model(args.model, device="cpu", quant="none")  # a fresh base for every run
            with tempfile.TemporaryDirectory() as tmp:
                records = skill_records(zip_path, Path(tmp) / "data")
                cfg = FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), **overrides, **GUARDS[guard],
                                                **({} if seed is None else {"seed": seed})})
                train, held = split_records(records, cfg.eval_fraction, cfg.seed)
                if base_scores is None:
                    base_scores = original_skills(lm.model, lm.processor)
                trainer = Trainer(lm.model, lm.processor, make_items(lm.processor, train),
                                  make_items(lm.processor, held), cfg, Path(tmp) / "job")
                before = trainer.evaluate()
                started = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - started
                after = trainer.evaluate()
                report = trainer.retention_report()
                scores = original_skills(trainer.unwrapped(), lm.processor)
            row = {"dataset": name, "guard": guard, "seed": cfg.seed, "n_train": len(train), "held_out": len(held),
                   "steps": trainer.state.step, "train_seconds": round(seconds, 1),
                   "probe_seconds": round(trainer.probe_seconds, 1),
                   "skill_before": round(before.exact_match, 3), "skill_after": round(after.exact_match, 3),
                   "original_before": round(base_scores["all"], 3), "original_after": round(scores["all"], 3),
                   "original_kept": round(scores["all"] / base_scores["all"], 3),
                   "color_before": round(base_scores["color"], 3), "color_after": round(scores["color"], 3),
                   "agreement": report["agreement"], "n_report": report["n"]}
            rows.append(row)
            if args.errors:
                for item, answer in zip(trainer.eval_items, after.answers):
                    if not exact_match(answer, item.reference):
                        print(f"  wrong: {item.question!r} -> {answer!r} (reference {item.reference!r})", flush=True)
            if not args.json:
                print(f"{name:<15} {guard:<6} seed {cfg.seed} skill {row['skill_before']:.1%} -> {row['skill_after']:.1%} "
                      f"({row['held_out']}); original {row['original_before']:.1%} -> {row['original_after']:.1%} "
                      f"(kept {row['original_kept']:.0%}); plain colour {row['color_before']:.1%} -> "
                      f"{row['color_after']:.1%}; agreement {row['agreement']:.1%} ({row['n_report']}); "
                      f"{row['steps']} steps {row['train_seconds']} s (+ probes {row['probe_seconds']} s)", flush=True)
    means = summary(rows)
    if args.json:
        print(json.dumps({"runs": rows, "means": means}, indent=1))
    else:
        for m in means:
            print(f"mean over {m['runs']} seeds: {m['dataset']:<15} {m['guard']:<6} skill {m['skill_after']:.1%}; "
                  f"original kept {m['original_kept']:.1%}; agreement {m['agreement']:.1%}; "
                  f"train {m['train_seconds']:.1f} s (+ probes {m['probe_seconds']:.1f} s)")
    return 0


def summary(rows: list[dict]) -> list[dict]:
    """Mean of each figure per dataset and guard, over the seeds run."""
    keys = ("skill_after", "original_kept", "agreement", "train_seconds", "probe_seconds")
    out = []
    for dataset, guard in dict.fromkeys((r["dataset"], r["guard"]) for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset and r["guard"] == guard]
        out.append({"dataset": dataset, "guard": guard, "runs": len(mine),
                    **{k: round(sum(r[k] for r in mine) / len(mine), 4) for k in keys}})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
