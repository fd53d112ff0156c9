"""`build-classroom` and `eval-classroom` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vitdemo.paths import CLASSROOM_MODEL_DIR



def register(subparsers: argparse._SubParsersAction) -> None:
    build = subparsers.add_parser("build-classroom", help="train the classroom model from a seed (about 55 min on 2 cores)")
    build.add_argument("--out", type=Path, default=CLASSROOM_MODEL_DIR, help="output folder (default: assets/classroom)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--instruction-steps", type=int, default=None, help="override stage-4 steps (quick trials)")
    build.add_argument("--no-polish", action="store_true",
                       help="stop after stage 4, without its short second phase (the polish)")
    build.add_argument("--device", default="cpu",
                       help="cpu, cuda or auto (a GPU is faster, but only the CPU build rebuilds the shipped weights exactly)")
    build.add_argument("--data-workers", type=int, default=0,
                       help="processes drawing training batches beside the model (worth it on a GPU: try 3)")
    build.set_defaults(func=run_build)

    ev = subparsers.add_parser("eval-classroom", help="score the classroom model on held-out scenes")
    ev.add_argument("--model", type=Path, default=CLASSROOM_MODEL_DIR)
    ev.add_argument("--scenes", type=int, default=500, help="held-out scenes (each asked every form)")
    ev.add_argument("--seed", type=int, default=None, help="held-out seed (default: the fixed held-out seed)")
    ev.add_argument("--no-pointing", action="store_true", help="skip the attention pointing game")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=run_eval)


def run_build(args: argparse.Namespace) -> int:
    from vitdemo.classroom.train import BuildSettings, build_classroom
    from vitdemo.errors import InputError
    from vitdemo.core.loading import resolve_device

    device = resolve_device(args.device)  # before any training: a bad name or a missing GPU is one line
    if args.data_workers < 0:
        raise InputError(f"--data-workers must be 0 or more, got {args.data_workers}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = BuildSettings(seed=args.seed, device=device, data_workers=args.data_workers)
    if args.instruction_steps:
        settings.instruction.steps = args.instruction_steps
    if args.no_polish:
        settings.polish = None
    record = build_classroom(args.out, settings)
    print(json.dumps({"out": str(args.out), "stages": [
        {"name": s["name"], "seconds": s["seconds"], "final_loss": s["curve"][-1][1]} for s in record["stages"]]}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from vitdemo.classroom.report import evaluate_classroom

    report = evaluate_classroom(args.model, n_scenes=args.scenes, seed=args.seed,
                                pointing=not args.no_pointing)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"held-out scenes: {args.scenes}, questions: {report['answers']['n_questions']}")
        print(f"exact match overall: {report['answers']['exact_match']:.3f}")
        for form, acc in report["answers"]["per_form"].items():
            print(f"  {form:<9} {acc:.3f}")
        print(f"describe names every object: {report['answers']['describe_all_objects']:.3f}")
        print(f"zero-shot caption top-1 of 5: {report['zero_shot_top1']:.3f}")
        if "pointing_game" in report:
            print(f"pointing game: {report['pointing_game']['accuracy']:.3f} "
                  f"({report['pointing_game']['map']})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="vitdemo")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.func(parsed))
