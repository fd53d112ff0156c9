"""The full quality report of a classroom checkpoint (what `eval-classroom` prints)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from vitdemo.attention.pointing import pointing_game
from vitdemo.classroom import evaluate, scenes

log = logging.getLogger(__name__)


def load_classroom(folder: Path):
    """Model and processor through the same Auto classes the app uses."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    return model.eval(), processor


def load_contrastive(folder: Path):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(Path(folder) / "contrastive").eval()


def evaluate_classroom(folder: Path, n_scenes: int = 500, seed: int | None = None,
                       pointing: bool = True, shifted: bool = True, absent: bool = True) -> dict:
    """Standard held-out scenes (answers, zero-shot, pointing); with `shifted`, the same
    answer scoring on background-shifted scenes (scenes.VARIED_STYLE, its own seed); with
    `absent`, questions about what a scene lacks (its own seed)."""
    seed = evaluate.HELD_OUT_SEED if seed is None else seed
    start = time.time()
    model, processor = load_classroom(folder)
    report: dict = {"model": str(folder), "scenes": n_scenes, "seed": seed}
    report["answers"] = evaluate.evaluate_answers(model, processor, n_scenes, seed)
    report["zero_shot_top1"] = evaluate.evaluate_zero_shot(load_contrastive(folder), processor,
                                                           n_scenes, seed + 1)
    if shifted:
        shifted_seed = evaluate.SHIFTED_SEED + (seed - evaluate.HELD_OUT_SEED)
        report["shifted_answers"] = {"seed": shifted_seed, **evaluate.evaluate_answers(
            model, processor, n_scenes, shifted_seed, style=scenes.VARIED_STYLE)}
    if absent:
        absent_seed = evaluate.ABSENT_SEED + (seed - evaluate.HELD_OUT_SEED)
        report["absent_answers"] = {"seed": absent_seed,
                                    **evaluate.evaluate_absent(model, processor, n_scenes, absent_seed)}
    if pointing:
        items = evaluate.pointing_items(evaluate.held_out_items(n_scenes, seed))
        report["pointing_game"] = pointing_game(model, processor, items)
    report["seconds"] = round(time.time() - start, 1)
    return report
