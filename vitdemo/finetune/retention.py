"""The retention guard: keep what the base model already knew while LoRA learns the upload.

A user's upload teaches one thing; without anything else in the batches the model answers
*every* question the new way (docs/finetune.md: original skills 48% -> 4%). The guard needs
no data beyond the upload:

1. Probe prompts over the upload's own images: for the classroom model its canonical
   question forms (the base model describes the image; the parsed description says which
   questions apply), for other models a small generic set; plus the user's own prompts.
2. The base model answers them once, greedily, before any training ("probes").
3. Every training step adds a probe batch beside the user's batch:
   - "replay": cross-entropy on the base model's own answers (self-distillation);
   - "kl": KL divergence to the base model's next-token distributions on those answers,
     with the base read through peft's `disable_adapter()` (no second copy of the weights,
     nothing extra for a 4-bit base).
4. The forgetting report asks the same kind of probes over held-out images before and after
   and gives the share of answers that stayed the same (agreement).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vitdemo.chat.conversation import assistant_message, user_message
from vitdemo.finetune.evaluate import EvalItem, generate_answers
from vitdemo.finetune.sft import IGNORE_INDEX, encode_conversation, normalize_answer

logger = logging.getLogger(__name__)

# Generic probes for any image-text model: what people ask first about any picture.
GENERIC_PROMPTS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the image?",
    "What colors do you see?",
    "How many objects are there?",
)
CLASSROOM_FORMS_SEED = 7  # the questions drawn per image are seeded: the same job asks the same probes


@dataclass
class Probe:
    """One probe: an image, a question and the base model's answer (the thing to keep)."""

    item: EvalItem  # messages [user(image, question), assistant(base answer)], encoded for training
    form: str  # question form (classroom) or the prompt itself (generic / user prompts)


def is_classroom_model(model: Any) -> bool:
    """The classroom model (or one built by build-classroom): its folder holds training.json."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    try:
        return bool(name) and (Path(name) / "training.json").is_file() and model.config.model_type == "llava"
    except OSError:
        return False


def _classroom_questions(description: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(form, question) pairs that apply to an image, from the base model's own description."""
    from vitdemo.classroom import scenes

    objects = []
    for color, shape, position in sorted(scenes.parse_description(description)):
        if color in scenes.COLORS and shape in scenes.SHAPES and position in scenes.POSITIONS:
            cell = scenes.POSITIONS.index(position)
            objects.append(scenes.SceneObject(color, shape, cell, (0, 0, 0, 0), np.zeros((1, 1), bool)))
    objects.sort(key=lambda o: o.cell)
    if not objects or len(objects) > scenes.MAX_OBJECTS:
        return [("describe", "Describe the image.")]  # nothing parsed: the description itself is the probe
    scene = scenes.Scene(image=None, objects=objects)  # type: ignore[arg-type] - questions need no pixels
    return [(qa.form, qa.question) for qa in scenes.questions_for(scene, rng, canonical=True)]


def _ask(model: Any, processor: Any, pairs: Sequence[tuple[Any, str]], max_new_tokens: int,
         batch_size: int) -> list[str]:
    items = [EvalItem(f"probe-{k}", _messages(q, ""), [image]) for k, (image, q) in enumerate(pairs)]
    return generate_answers(model, processor, items, max_new_tokens, batch_size)


def _messages(question: str, answer: str) -> list[dict]:
    return [user_message(question, 1), assistant_message(answer)]


def probe_questions(model: Any, processor: Any, images: Sequence[Any], *, classroom: bool,
                    user_prompts: Sequence[str] = (), exclude: Sequence[str] = (), seed: int = 0,
                    max_new_tokens: int = 48, batch_size: int = 32) -> list[tuple[Any, str, str]]:
    """(image, form, question) probes over `images`; questions the upload itself asks are left out
    (what the user teaches may change those answers on purpose)."""
    taught = {normalize_answer(q).lower() for q in exclude}
    rng = np.random.default_rng([CLASSROOM_FORMS_SEED, seed])
    out: list[tuple[Any, str, str]] = []
    if classroom:
        descriptions = _ask(model, processor, [(im, "Describe the image.") for im in images], max_new_tokens,
                            batch_size)
        for image, text in zip(images, descriptions):
            out += [(image, form, q) for form, q in _classroom_questions(text, rng)]
    else:
        out += [(image, prompt, prompt) for image in images for prompt in GENERIC_PROMPTS]
    out += [(image, "yours: " + p.strip(), p.strip()) for image in images for p in user_prompts]
    return [p for p in out if normalize_answer(p[2]).lower() not in taught]


def build_probes(model: Any, processor: Any, images: Sequence[Any], *, classroom: bool, limit: int,
                 user_prompts: Sequence[str] = (), exclude: Sequence[str] = (), seed: int = 0,
                 encode: bool = True, max_new_tokens: int = 48, batch_size: int = 32) -> list[Probe]:
    """Ask the probes (at most `limit`, drawn evenly over forms) and keep the base model's answers.

    `model` must be the base model (before LoRA, or with the adapter disabled)."""
    questions = probe_questions(model, processor, images, classroom=classroom, user_prompts=user_prompts,
                                exclude=exclude, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if len(questions) > limit:
        order = np.random.default_rng([CLASSROOM_FORMS_SEED, seed, 1]).permutation(len(questions))[:limit]
        questions = [questions[i] for i in sorted(order.tolist())]
    answers = _ask(model, processor, [(im, q) for im, _, q in questions], max_new_tokens, batch_size)
    probes = []
    for k, ((image, form, q), a) in enumerate(zip(questions, answers)):
        if not a.strip():
            continue  # an empty answer teaches nothing and cannot be encoded as a target
        item = EvalItem(f"probe-{k}", _messages(q, a), [image])
        if encode:
            item.encoded = encode_conversation(processor, item.messages, item.images)
        probes.append(Probe(item, form))
    logger.info("%d probes (%d questions asked; %s prompts)", len(probes), len(questions),
                "classroom" if classroom else "generic")
    return probes


def agreement_report(probes: Sequence[Probe], after: Sequence[str]) -> dict[str, Any]:
    """How many of the base model's answers the tuned model still gives, overall and per form."""
    if not probes:
        return {"n": 0, "agreement": None, "per_form": {}}
    same = [normalize_answer(a) == normalize_answer(p.item.reference) for p, a in zip(probes, after)]
    forms: dict[str, list[bool]] = {}
    for p, s in zip(probes, same):
        forms.setdefault(p.form, []).append(s)
    return {"n": len(same), "agreement": round(sum(same) / len(same), 4),
            "per_form": {f: round(sum(v) / len(v), 4) for f, v in sorted(forms.items())}}


def probe_loss(model: Any, batch: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
    """The guard's loss on one probe batch (labels = the base model's answer tokens).

    replay: cross-entropy to the base answers. kl: KL(base || tuned) of the next-token
    distributions at the answer positions; the base is the same weights with the adapter
    disabled, read without gradients."""
    if mode == "replay":
        return model(**batch).loss
    labels = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    mask = labels != IGNORE_INDEX  # (B, T-1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    peft_model = getattr(model, "module", model)  # DDP wraps the PeftModel
    with torch.no_grad(), (peft_model.disable_adapter() if hasattr(peft_model, "disable_adapter") else nullcontext()):
        ref = peft_model(**inputs).logits[:, :-1][mask].float().log_softmax(-1)  # (N, V)
    student = model(**inputs).logits[:, :-1][mask].float().log_softmax(-1)  # (N, V)
    return torch.nn.functional.kl_div(student, ref, log_target=True, reduction="batchmean")
