"""How long a whole classroom build takes on this machine, without running one (an hour).

Times training steps of each kind side by side in one process on the shipped model (batches
drawn as the recipe draws them, forward + backward + AdamW step), then scales the stages'
step counts of the recipe (BuildSettings) by them. Stages 1-3 are scaled from the seconds a
whole build recorded (`docs/classroom-runs/build.log`'s second build) by the ratio of this
machine's stage-4 step to that build's.

    .venv/bin/python bench/classroom_build_time.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The second whole build (2026-11-29, docs/classroom-runs/build.log): seconds per stage and
# its stage-4 seconds per step.
RECORDED = {"contrastive": 554.2, "language": 80.9, "alignment": 104.2, "instruction": 2228.7}
RECORDED_STAGE4_STEP_S = 2228.7 / 7000


def main() -> int:
    import numpy as np
    import torch

    from vitdemo.classroom.batches import BatchMaker
    from vitdemo.classroom.report import load_classroom
    from vitdemo.classroom.train import BuildSettings, _instruction_groups, backgrounds_batch, instruction_loss
    from vitdemo.paths import CLASSROOM_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind (after 3 warm-up steps)")
    args = parser.parse_args()
    settings = BuildSettings()
    torch.set_num_threads(settings.threads)
    model, processor = load_classroom(CLASSROOM_MODEL_DIR)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(_instruction_groups(model, 1e-6, 1.0), lr=1e-6)
    kinds = {
        "instruction": (BatchMaker(processor, np.random.default_rng(1)),
                        lambda m: m.instruction_batch(32, settings.max_turns, settings.form_weights)),
        "backgrounds": (BatchMaker(processor, np.random.default_rng(3), varied_share=settings.backgrounds_varied_share),
                        lambda m: backgrounds_batch(m, settings)),
    }
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for step in range(3 + args.steps):  # alternate, so a busier moment hits every kind alike
        for name, (maker, draw) in kinds.items():
            start = time.perf_counter()
            loss = instruction_loss(model, draw(maker))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 3:
                seconds[name].append(time.perf_counter() - start)
    per_step = {k: float(np.median(v)) for k, v in seconds.items()}
    speed = per_step["instruction"] / RECORDED_STAGE4_STEP_S  # this machine against the recorded build
    estimate = {name: s * speed for name, s in RECORDED.items()}
    estimate["backgrounds"] = per_step["backgrounds"] * (settings.backgrounds.steps if settings.backgrounds else 0)
    total = sum(estimate.values())
    print(json.dumps({"median_step_s": {k: round(v, 3) for k, v in per_step.items()},
                      "backgrounds_step_vs_stage4": round(per_step["backgrounds"] / per_step["instruction"], 3),
                      "machine_vs_recorded_build": round(speed, 3),
                      "estimated_stage_s": {k: round(v) for k, v in estimate.items()},
                      "estimated_total_min": round(total / 60, 1),
                      "estimated_total_min_at_recorded_speed": round(total / speed / 60, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
