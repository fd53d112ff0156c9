"""Screen classroom build recipes across seeds: several builds at once, side by side.

Whether stage 4 learns to bind a question to one object is a matter of the run in the
shipped recipe (docs/classroom.md), so a recipe change is judged on several seeds, not
one build. Each build runs the full recipe (its learning-rate schedules unchanged) in its
own process until it ends or the deadline stops it, on a GPU when there is one (with
worker processes drawing batches); the held-out checks it logged every `--eval-every`
stage-4 steps are then printed as one table.

  python research/recipe_screen.py --variant shipped --seed 1 --seed 2 --out /tmp/screen --deadline 480

A variant is a name for BuildSettings fields set on top of the shipped recipe: add a field
to BuildSettings (off by default) and a line to VARIANTS to screen a change.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitdemo.classroom.train import BuildSettings, StageSettings, build_classroom  # noqa: E402

# Recipe changes by name: BuildSettings fields on top of the shipped recipe.
VARIANTS: dict[str, dict] = {
    "shipped": {},
}

CHECK = re.compile(r"instruction step (\d+): held-out exact match ([\d.]+) (\{.*\})")


def run_one(variant: str, seed: int, out: Path, eval_every: int, workers: int, smoke: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cuda = torch.cuda.is_available()
    settings = BuildSettings(seed=seed, device="cuda" if cuda else "cpu", data_workers=workers if cuda else 0,
                             threads=1, eval_every=eval_every, **VARIANTS[variant])
    if smoke:  # a few steps per stage: does the screen run here at all?
        tiny = StageSettings(steps=4, batch_size=4, warmup=1)
        settings.contrastive = settings.language = settings.alignment = settings.instruction = tiny
        settings.backgrounds = tiny
        settings.eval_every, settings.eval_scenes, settings.zero_shot_scenes, settings.log_every = 2, 2, 4, 2
    build_classroom(out / f"{variant}-seed{seed}", settings)


def checks(log_file: Path) -> list[tuple[int, float, dict]]:
    """(step, exact match, per form) of each held-out check a build logged."""
    found = []
    for line in log_file.read_text(errors="replace").splitlines():
        match = CHECK.search(line)
        if match:
            found.append((int(match[1]), float(match[2]), ast.literal_eval(match[3])))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the builds")
    parser.add_argument("--logs", type=Path, default=None, help="folder for the logs (default: --out)")
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds before unfinished builds stop")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="batch-drawing processes per build (GPU only)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage, to check the set-up")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one[0], int(args.one[1]), args.out, args.eval_every, args.workers, args.smoke)
        return 0

    logs = args.logs or args.out
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple[subprocess.Popen, Path]] = {}
    for variant in args.variant:
        for seed in args.seed:
            name = f"{variant}-seed{seed}"
            log_file = logs / f"{name}.log"
            with log_file.open("w") as sink:
                process = subprocess.Popen(
                    [sys.executable, __file__, "--one", variant, str(seed), "--variant", variant, "--seed", str(seed),
                     "--out", str(args.out), "--eval-every", str(args.eval_every), "--workers", str(args.workers)]
                    + (["--smoke"] if args.smoke else []),
                    stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
            runs[name] = (process, log_file)
    start = time.time()
    while time.time() - start < args.deadline and any(p.poll() is None for p, _ in runs.values()):
        time.sleep(5)
    for process, _ in runs.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    print(f"{time.time() - start:.0f} s; held-out checks (exact match, \"where\") by stage-4 step")
    for name, (process, log_file) in runs.items():
        found = checks(log_file)
        row = "  ".join(f"{step}: {exact:.3f} {forms.get('where', 0):.2f}" for step, exact, forms in found)
        state = "done" if process.returncode == 0 else ("stopped" if process.returncode == -signal.SIGKILL
                                                          else f"failed ({process.returncode})")
        print(f"{name:<18} {state:<8} {row}")
    return 0 if all(p.returncode in (0, -signal.SIGKILL) for p, _ in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
