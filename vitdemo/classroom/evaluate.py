"""Scoring the classroom model on held-out scenes: exact match per question form,
descriptions, zero-shot caption matching, and the pointing game's items.

Held-out scenes come from seeds the training never draws from (training uses seeds
below HELD_OUT_SEED).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitdemo.attention.pointing import PointingItem
from vitdemo.chat.batch_answer import answer_batch
from vitdemo.classroom import scenes
from vitdemo.classroom.zero_shot import match_captions

log = logging.getLogger(__name__)

HELD_OUT_SEED = 1_000_003
# The background-shifted held-out set (scenes.VARIED_STYLE): a seed of its own, so its
# layouts are not those of the standard set drawn again.
SHIFTED_SEED = 2_000_003
# Questions about what a held-out scene does not have ("no circle"): their own seed too.
ABSENT_SEED = 3_000_003


@dataclass
class SceneQuestion:
    """One held-out question about a generated scene (its answer and target in `qa`)."""

    scene: scenes.Scene
    qa: scenes.QA


def held_out_items(n_scenes: int, seed: int = HELD_OUT_SEED, size: int = 192,
                   style: scenes.SceneStyle = scenes.SceneStyle()) -> list[SceneQuestion]:
    """Every canonical question form that applies, for each held-out scene."""
    rng = np.random.default_rng(seed)
    items: list[SceneQuestion] = []
    for _ in range(n_scenes):
        scene = scenes.generate_scene(rng, size=size, style=style)
        if rng.random() < 0.3:  # uploads are often JPEGs
            scene.image = scenes.jpeg_roundtrip(scene.image, int(rng.integers(40, 90)))
        items += [SceneQuestion(scene, qa) for qa in scenes.questions_for(scene, rng, canonical=True)]
    return items


def absent_items(n_scenes: int, seed: int = ABSENT_SEED, size: int = 192) -> list[SceneQuestion]:
    """One question about something missing (scenes.absent_question) per held-out scene that allows one."""
    rng = np.random.default_rng(seed)
    items: list[SceneQuestion] = []
    for _ in range(n_scenes):
        scene = scenes.generate_scene(rng, size=size)
        qa = scenes.absent_question(scene, rng, canonical=True)
        if qa is not None:
            items.append(SceneQuestion(scene, qa))
    return items


def evaluate_absent(model: Any, processor: Any, n_scenes: int, seed: int = ABSENT_SEED) -> dict:
    """Exact match of "no ..." to questions about what the scene lacks, overall and per
    kind of question (colour of a missing shape, shape of a missing colour)."""
    items = absent_items(n_scenes, seed)
    answers = answer_batch(model, processor, [i.scene.image for i in items], [i.qa.question for i in items])
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, answer in zip(items, answers):
        kind = "shape" if item.qa.answer.endswith(" object") else "color"  # "no red object" | "no circle"
        hits[kind].append(answer == item.qa.answer)
    every = [h for v in hits.values() for h in v]
    return {"exact_match": float(np.mean(every)) if every else 0.0,
            "per_kind": {kind: float(np.mean(v)) for kind, v in sorted(hits.items())},
            "n_questions": len(every)}


def cell_box(cell: int, size: tuple[int, int], n: int = 3) -> tuple[float, float, float, float]:
    """Box (x0, y0, x1, y1) of cell `cell` (row-major) of an n x n grid over an image of (width, height)."""
    row, col = divmod(cell, n)
    w, h = size[0] / n, size[1] / n
    return (col * w, row * h, (col + 1) * w, (row + 1) * h)


def pointing_items(items: list[SceneQuestion]) -> list[PointingItem]:
    """The pointing game's items: each question about one object, whose scene cell is the target
    (the attention map's peak must land in the asked object's cell), grouped by question form."""
    return [PointingItem(i.scene.image, i.qa.question, cell_box(i.scene.objects[i.qa.target].cell, i.scene.image.size),
                         group=i.qa.form) for i in items if i.qa.target is not None]


def score_answers(items: list[SceneQuestion], answers: list[str]) -> dict:
    """Exact match overall and per form; for descriptions also 'every object named'."""
    hits: dict[str, list[bool]] = defaultdict(list)
    described: list[bool] = []
    for item, answer in zip(items, answers):
        hits[item.qa.form].append(answer == item.qa.answer)
        if item.qa.form == "describe":
            truth = {(o.color, o.shape, o.position) for o in item.scene.objects}
            described.append(scenes.parse_description(answer) == truth)
    all_hits = [h for v in hits.values() for h in v]
    return {
        "exact_match": float(np.mean(all_hits)) if all_hits else 0.0,
        "per_form": {form: float(np.mean(v)) for form, v in sorted(hits.items())},
        "describe_all_objects": float(np.mean(described)) if described else 0.0,
        "n_questions": len(all_hits),
    }


def evaluate_answers(model: Any, processor: Any, n_scenes: int, seed: int = HELD_OUT_SEED,
                     style: scenes.SceneStyle = scenes.SceneStyle()) -> dict:
    """Greedy answers to every held-out question, scored (`score_answers`)."""
    items = held_out_items(n_scenes, seed, style=style)
    answers = answer_batch(model, processor, [i.scene.image for i in items],
                           [i.qa.question for i in items])
    return score_answers(items, answers)


def caption_candidates(scene: scenes.Scene, rng: np.random.Generator, n: int = 5, hard: bool = False) -> list[str]:
    """The true description first, then n-1 descriptions of other scenes with as many
    objects, or (hard) of the same scene with one place, shape or colour changed."""
    truth = scenes.describe(scene)
    layout = [(o.color, o.shape, o.cell) for o in scene.objects]
    out = [truth]
    for _ in range(200):
        if len(out) == n:
            break
        other_layout = scenes.perturb_layout(layout, rng) if hard else None
        other = scenes.describe(scenes.generate_scene(rng, size=24, n_objects=len(scene.objects), layout=other_layout,
                                                      style=scenes.SceneStyle(supersample=1)))
        if other not in out:
            out.append(other)
    return out


def evaluate_zero_shot(clip: Any, processor: Any, n_scenes: int, seed: int = HELD_OUT_SEED + 1, hard: bool = False) -> float:
    """Top-1 accuracy of picking the true caption among 5 (hard: near-miss captions)."""
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(n_scenes):
        scene = scenes.generate_scene(rng, size=192)
        match = match_captions(clip, processor, [scene.image], caption_candidates(scene, rng, hard=hard))
        hits.append(match.picked[0] == 0)
    return float(np.mean(hits))
