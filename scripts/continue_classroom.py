"""Run the recipe's last stage (backgrounds) on a classroom checkpoint that has stages 1-4.

    mkdir -p /tmp/stage4 && git archive 514f794 assets/classroom | tar -x -C /tmp/stage4 --strip-components=2
    .venv/bin/python scripts/continue_classroom.py --model /tmp/stage4 --out runs/classroom

How the shipped checkpoint got its last stage: commit 514f794 holds the stage-4 weights a
whole build wrote (the second build, on the CPU of the sessions before 2026-12-01), and the
stage draws from its own data stream, so it depends on those weights alone: in minutes
instead of an hour, this writes what a whole build does after its stage 4. It is bit-exact
on one kind of CPU with the build's two threads (the shipped last stage was run on an AMD
EPYC with AVX-512, twice, with equal tensors); another kind rounds differently. The stage's record is appended to the folder's training.json, the
record's settings become the recipe's, and the generation config gets the recipe's cap on
new tokens. Refuses a folder with other stages than 1-4.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES_BEFORE = ["contrastive", "language", "alignment", "instruction"]


def main() -> int:
    import torch

    from vitdemo.classroom.model import answer_token_cap
    from vitdemo.classroom.report import load_classroom
    from vitdemo.classroom.train import BuildSettings, _example_answers, backgrounds_stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="classroom folder with stages 1-4")
    parser.add_argument("--out", type=Path, required=True, help="new folder (must not exist)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record = json.loads((args.model / "training.json").read_text())
    names = [stage["name"] for stage in record["stages"]]
    if names != STAGES_BEFORE:
        print(f"error: {args.model} has stages {names}; this adds the last stage to a folder with {STAGES_BEFORE}",
              file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"error: {args.out} exists; give a new folder", file=sys.stderr)
        return 2
    settings = BuildSettings()
    torch.set_num_threads(settings.threads)
    model, processor = load_classroom(args.model)
    result = backgrounds_stage(model, processor, settings)
    result["answers_after"] = _example_answers(model, processor)
    record["stages"].append(result)
    record["settings"] = asdict(settings)
    model.eval()
    model.generation_config.max_new_tokens = answer_token_cap(processor.tokenizer)
    work = args.out.parent / (args.out.name + ".building")
    shutil.copytree(args.model, work)  # the contrastive encoder and the example images come along
    model.save_pretrained(work)  # the processor files stay as the build wrote them (a reload adds fields)
    (work / "training.json").write_text(json.dumps(record, indent=1))
    work.rename(args.out)
    print(json.dumps({"out": str(args.out), "seconds": result["seconds"],
                      "held_out_after": result["held_out_after"]["exact_match"],
                      "shifted_held_out_after": result["shifted_held_out_after"]["exact_match"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
