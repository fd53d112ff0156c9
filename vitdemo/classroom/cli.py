"""`build-classroom`, `eval-classroom`, `logit-lens-classroom` and `eval-maps` subcommands."""

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
    build.add_argument("--no-backgrounds", action="store_true",
                       help="stop before the last stage (varied backgrounds, blur and object sizes)")
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
    ev.add_argument("--no-shifted", action="store_true", help="skip the background-shifted held-out set")
    ev.add_argument("--no-absent", action="store_true", help="skip the questions about what a scene lacks")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=run_eval)

    lens = subparsers.add_parser("logit-lens-classroom",
                                 help="per layer, share of object patches the logit lens decodes to their colour/shape")
    lens.add_argument("--model", type=Path, default=CLASSROOM_MODEL_DIR)
    lens.add_argument("--scenes", type=int, default=100, help="held-out scenes (default 100)")
    lens.add_argument("--seed", type=int, default=None, help="held-out seed (default: the fixed held-out seed)")
    lens.add_argument("--min-cover", type=float, default=0.5,
                      help="object patch: share of the cell its object's mask covers, above this (default 0.5)")
    lens.add_argument("--json", action="store_true")
    lens.set_defaults(func=run_lens_eval)

    maps = subparsers.add_parser("eval-maps", help="causal checks of the maps on held-out scenes: ablation of the "
                                                   "asked object, deletion/insertion AUC per map kind")
    maps.add_argument("--model", type=Path, default=CLASSROOM_MODEL_DIR)
    maps.add_argument("--scenes", type=int, default=100, help="held-out scenes for the ablation checks (default 100)")
    maps.add_argument("--questions", type=int, default=200,
                      help="held-out questions about one object for the deletion/insertion curves (default 200)")
    maps.add_argument("--no-relevancy", action="store_true", help="leave the relevancy map out of the curves")
    maps.add_argument("--json", action="store_true")
    maps.set_defaults(func=run_map_checks)


def run_map_checks(args: argparse.Namespace) -> int:
    from vitdemo.attention.causal_view import relevancy_map_maker
    from vitdemo.classroom.map_checks import ablation_checks, faithfulness_checks
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model
    from vitdemo.errors import InputError

    if args.scenes < 1 or args.questions < 1:
        raise InputError("--scenes and --questions must be at least 1")
    engine = Engine(load_model(str(args.model), device="cpu"))
    extra = {} if args.no_relevancy else {"relevancy": relevancy_map_maker}
    report = {"model": str(args.model), "ablation": ablation_checks(engine, args.scenes),
              "faithfulness": faithfulness_checks(engine.model, engine.processor, args.questions, extra_maps=extra)}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for method, forms in report["ablation"]["methods"].items():
        print(f"{method:<12} " + "  ".join(
            f"{form}: removed->changes {share(s['target_removed_changes_answer'])}, other->keeps "
            f"{share(s['other_removed_keeps_answer'])} (n={s['n']})" for form, s in forms.items()))
    faith = report["faithfulness"]
    for kind, s in faith["kinds"].items():
        ratio = faith["deletion_ratio_to_random"].get(kind)
        print(f"{kind:<10} deletion AUC {s['deletion_auc']:.3f}  insertion AUC {s['insertion_auc']:.3f}"
              + (f"  deletion / random {ratio:.2f}" if ratio is not None else ""))
    return 0


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
    if args.no_backgrounds:
        settings.backgrounds = None
    record = build_classroom(args.out, settings)
    print(json.dumps({"out": str(args.out), "stages": [
        {"name": s["name"], "seconds": s["seconds"], "final_loss": s["curve"][-1][1]} for s in record["stages"]]}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from vitdemo.classroom.report import evaluate_classroom

    report = evaluate_classroom(args.model, n_scenes=args.scenes, seed=args.seed,
                                pointing=not args.no_pointing, shifted=not args.no_shifted,
                                absent=not args.no_absent)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"held-out scenes: {args.scenes}, questions: {report['answers']['n_questions']}")
        print(f"exact match overall: {report['answers']['exact_match']:.3f}")
        for form, acc in report["answers"]["per_form"].items():
            print(f"  {form:<9} {acc:.3f}")
        print(f"describe names every object: {report['answers']['describe_all_objects']:.3f}")
        if "shifted_answers" in report:
            shifted = report["shifted_answers"]
            print(f"background-shifted scenes: exact match {shifted['exact_match']:.3f} "
                  + " ".join(f"{form} {acc:.3f}" for form, acc in shifted["per_form"].items()))
        if "absent_answers" in report:
            absent = report["absent_answers"]
            print(f"questions about what is not there (\"no ...\"): exact match {absent['exact_match']:.3f} "
                  + " ".join(f"{kind} {acc:.3f}" for kind, acc in absent["per_kind"].items()))
        print(f"zero-shot caption top-1 of 5: {report['zero_shot_top1']:.3f}")
        if "pointing_game" in report:
            print(f"pointing game: {report['pointing_game']['accuracy']:.3f} "
                  f"({report['pointing_game']['map']})")
    return 0


def run_lens_eval(args: argparse.Namespace) -> int:
    from vitdemo.classroom.evaluate import HELD_OUT_SEED
    from vitdemo.classroom.lens_eval import LensEvalSettings, evaluate_lens_folder

    settings = LensEvalSettings(n_scenes=args.scenes, seed=HELD_OUT_SEED if args.seed is None else args.seed,
                                min_cover=args.min_cover)
    report = evaluate_lens_folder(args.model, settings)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"held-out scenes: {report['scenes']}, object patches: {report['object_patches']} "
          f"(> {report['min_cover']:.0%} covered), background patches: {report['background_patches']}")
    print("layer         colour  shape  either  any colour  background   most frequent words")
    for row in report["layers"]:
        print(f"{row['name']:<12} {row['colour']:>6.3f} {row['shape']:>6.3f} {row['either']:>7.3f} "
              f"{row['any_colour']:>11.3f} {row['background_any_word']:>11.3f}   "
              + ", ".join(w for w, _ in row["top_words"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="vitdemo")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.func(parsed))
