"""Benchmark: the pointing game of the relevancy map beside the default attention map.

    .venv/bin/python bench/relevancy_pointing.py [--scenes 200] [--seed HELD_OUT_SEED] [--model DIR]

Same held-out items for both (`evaluate.pointing_items(held_out_items(N, seed))`, the
items `eval-classroom` scores): the default map (first answer token, middle layers, all
heads) and the gradient-weighted relevancy map of the same first answer token
(`vitdemo.attention.relevancy`, Chefer et al. 2021). Prints one JSON object: each map's
accuracy, hits, per-form accuracy and seconds per item. Uses the shipped classroom model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    import torch

    from vitdemo.attention.pointing import pointing_game
    from vitdemo.classroom import evaluate
    from vitdemo.classroom.report import load_classroom

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes (about 3 targeted questions each)")
    parser.add_argument("--seed", type=int, default=evaluate.HELD_OUT_SEED, help="held-out seed (eval-classroom's)")
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "classroom")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, processor = load_classroom(args.model)
    items = evaluate.pointing_items(evaluate.held_out_items(args.scenes, args.seed))
    report: dict = {"model": str(args.model), "scenes": args.scenes, "seed": args.seed, "items": len(items)}
    for kind in ("attention", "relevancy"):
        start = time.perf_counter()
        game = pointing_game(model, processor, items, map_kind=kind)
        game["seconds_per_item"] = round((time.perf_counter() - start) / len(items), 4)
        report[kind] = game
    report["relevancy_minus_attention"] = round(report["relevancy"]["accuracy"] - report["attention"]["accuracy"], 4)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
