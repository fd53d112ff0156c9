"""The shipped recipe's numbers are pinned: a short build (a few steps per stage, the
shipped settings otherwise, seed 0) must write exactly the tensors and records it wrote
when the hashes below were recorded.

A full build takes about 55 minutes, so this short build is how CI knows that
`build-classroom` still rebuilds the shipped checkpoint bit for bit: any change that
alters the recipe's numbers (a random number drawn more or less, an operation reordered,
a default moved) changes these hashes. If a change to the recipe is meant to change the
numbers, rebuild `assets/classroom/` with it and record the new hashes (the failure
message prints them).

Bit-exactness holds on one kind of CPU with the build's two threads; another CPU (or a
GPU) may round differently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vitdemo.classroom.train import BuildSettings, StageSettings, build_classroom

pytestmark = pytest.mark.slow

# Stages 1-4 and the polish, recorded with the recipe of commit b79184c (before the unused
# recipe knobs were removed): the stages that made the weights the backgrounds stage starts from.
UP_TO_POLISH_WEIGHTS_SHA256 = "6a6da42f61df86533f30608e13b7d55ee09d54c6f8881e8115714ad0b28a9d4c"
UP_TO_POLISH_STAGES_SHA256 = "eae704466513aefaf96f2f8864ed1bb0c2db6a932662e69d7788eff313f34dde"
# The whole recipe, the backgrounds stage included (recorded with the recipe that made the
# shipped checkpoint of 2026-12-01).
WEIGHTS_SHA256 = "56784bfb577dc7e9798eb3fc1077822bf1e4a2166ae6fe2c1a35c93e41ebc960"
STAGES_SHA256 = "117fe8d16349b52e89314714df9b507436c714817bb38572b024da265d097c2c"


def short_shipped_settings() -> BuildSettings:
    """The shipped recipe (BuildSettings' defaults, polish and backgrounds included) with 3
    steps of 4 scenes per stage and the smallest checks."""
    def short() -> StageSettings:
        return StageSettings(steps=3, batch_size=4, warmup=1)

    return BuildSettings(seed=0, contrastive=short(), language=short(), alignment=short(), instruction=short(),
                         polish=short(), backgrounds=short(), log_every=1, eval_every=2, eval_scenes=2,
                         zero_shot_scenes=4)


def tensors_sha256(out: Path) -> str:
    """One hash over every tensor saved: the LLaVA model's and the contrastive CLIP's,
    each by file, name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for file in (out / "model.safetensors", out / "contrastive" / "model.safetensors"):
        with safe_open(file, framework="pt") as tensors:
            for name in sorted(tensors.keys()):
                tensor = tensors.get_tensor(name).contiguous()
                digest.update(f"{file.relative_to(out)}:{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stages_sha256(out: Path) -> str:
    """One hash over training.json's stages (settings, loss curves, held-out checks,
    zero-shot scores, example answers) without their timings. The top-level echo of
    BuildSettings is left out: a new setting that is off changes no number."""
    stages = json.loads((out / "training.json").read_text())["stages"]
    for stage in stages:
        stage.pop("seconds")
    return hashlib.sha256(json.dumps(stages, sort_keys=True).encode()).hexdigest()


def test_a_short_build_of_the_shipped_recipe_writes_the_recorded_numbers(tmp_path):
    out = tmp_path / "classroom"
    record = build_classroom(out, short_shipped_settings())
    assert [s["name"] for s in record["stages"]] == ["contrastive", "language", "alignment", "instruction", "polish",
                                                    "backgrounds"]
    weights, stages = tensors_sha256(out), stages_sha256(out)
    assert (weights, stages) == (WEIGHTS_SHA256, STAGES_SHA256), (
        f"the short build's numbers changed: weights {weights}, stages {stages}; if the recipe was meant to "
        "change, rebuild assets/classroom and record these")


def test_without_the_backgrounds_stage_the_build_is_the_one_before_it(tmp_path):
    """The shipped checkpoint was made by running the backgrounds stage on the previous
    shipped weights (stages 1-4 and the polish): that equals a whole build only while the
    stages before it draw and compute exactly what they did."""
    out = tmp_path / "classroom"
    settings = short_shipped_settings()
    settings.backgrounds = None
    build_classroom(out, settings)
    assert (tensors_sha256(out), stages_sha256(out)) == (UP_TO_POLISH_WEIGHTS_SHA256, UP_TO_POLISH_STAGES_SHA256)
