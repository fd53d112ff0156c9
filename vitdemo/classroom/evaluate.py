"""Scoring the classroom model on held-out scenes: exact match per question form,
descriptions, zero-shot caption matching.

Held-out scenes come from seeds the training never draws from (training uses seeds
below HELD_OUT_SEED).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitdemo.classroom import scenes
from vitdemo.learn.contrastive import match_captions

log = logging.getLogger(__name__)

HELD_OUT_SEED = 1_000_003


@dataclass
class EvalItem:
    scene: scenes.Scene
    qa: scenes.QA


def held_out_items(n_scenes: int, seed: int = HELD_OUT_SEED, size: int = 192) -> list[EvalItem]:
    """Every canonical question form that applies, for each held-out scene."""
    rng = np.random.default_rng(seed)
    items: list[EvalItem] = []
    for _ in range(n_scenes):
        scene = scenes.generate_scene(rng, size=size)
        if rng.random() < 0.3:  # uploads are often JPEGs
            scene.image = scenes.jpeg_roundtrip(scene.image, int(rng.integers(40, 90)))
        items += [EvalItem(scene, qa) for qa in scenes.questions_for(scene, rng, canonical=True)]
    return items


@torch.inference_mode()
def answer_batch(model, processor, images: list[Image.Image], questions: list[str],
                 max_new_tokens: int = 40, batch_size: int = 32) -> list[str]:
    """Greedy answers, one image and one question each, batched with left padding."""
    tok = processor.tokenizer
    answers: list[str] = []
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(questions), batch_size):
            qs = questions[start:start + batch_size]
            ims = images[start:start + batch_size]
            prompts = [processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True) for q in qs]
            inputs = processor(images=ims, text=prompts, return_tensors="pt", padding=True)
            inputs = inputs.to(model.device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]  # (B, generated)
            answers += [a.strip() for a in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side = old_side
    return answers


def score_answers(items: list[EvalItem], answers: list[str]) -> dict:
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


def evaluate_answers(model, processor, n_scenes: int, seed: int = HELD_OUT_SEED) -> dict:
    items = held_out_items(n_scenes, seed)
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


def evaluate_zero_shot(clip, processor, n_scenes: int, seed: int = HELD_OUT_SEED + 1, hard: bool = False) -> float:
    """Top-1 accuracy of picking the true caption among 5 (hard: near-miss captions)."""
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(n_scenes):
        scene = scenes.generate_scene(rng, size=192)
        match = match_captions(clip, processor, [scene.image], caption_candidates(scene, rng, hard=hard))
        hits.append(match.picked[0] == 0)
    return float(np.mean(hits))
