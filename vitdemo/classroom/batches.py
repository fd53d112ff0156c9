"""Training batches for the classroom model's stages, built straight from generated scenes.

Token ids are built piecewise, which equals tokenizing the chat template's string because
the template puts no whitespace between special tokens and text (checked in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from vitdemo.classroom import scenes
from vitdemo.classroom.model import ASSISTANT_TOKEN, END_TOKEN, IMAGE_TOKEN, USER_TOKEN

IGNORE = -100  # label of tokens that carry no loss


@dataclass(frozen=True)
class Augment:
    """How training images vary, so uploads of any size and quality still work."""

    render_sizes: tuple[int, ...] = (64, 96, 96, 128, 160, 256)  # drawn, then resized
    jpeg_probability: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)


def _reply_weights(labels: list[int], reply_weights: list[float]) -> list[float]:
    """One weight per token: each reply (a run of labelled tokens) gets its turn's weight,
    unlabelled tokens 0. Assumes labels on the answers only (dialogue's default), so each
    reply is one run."""
    out: list[float] = []
    turn = -1
    for k, label in enumerate(labels):
        if label == IGNORE:
            out.append(0.0)
            continue
        if k == 0 or labels[k - 1] == IGNORE:
            turn += 1
            if turn >= len(reply_weights):
                raise ValueError(f"more replies in the labels than the {len(reply_weights)} weights")
        out.append(reply_weights[turn])
    if turn != len(reply_weights) - 1:
        raise ValueError(f"{turn + 1} replies in the labels, {len(reply_weights)} weights")
    return out


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy with a weight per label token, normalised by the weights' sum
    (all weights 1: the mean loss the model computes itself)."""
    logits = logits[:, :-1].float()
    labels, weights = labels[:, 1:], weights[:, 1:].to(logits.device)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                  ignore_index=IGNORE, reduction="none")
    weights = weights.reshape(-1) * (labels.reshape(-1) != IGNORE)
    return (per_token * weights).sum() / weights.sum().clamp_min(1e-8)


class BatchMaker:
    """Batches for every stage. `varied_share` of the images get a varied background,
    blur and object size (scenes.VARIED_STYLE); at 0 no random number is drawn for it."""

    def __init__(self, processor, rng: np.random.Generator, augment: Augment = Augment(),
                 varied_share: float = 0.0):
        if not 0.0 <= varied_share <= 1.0:
            raise ValueError(f"varied_share must be in [0, 1], got {varied_share}")
        self.varied_share = varied_share
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.rng = rng
        self.augment = augment
        tok = self.tokenizer
        self.user_id = tok.convert_tokens_to_ids(USER_TOKEN)
        self.assistant_id = tok.convert_tokens_to_ids(ASSISTANT_TOKEN)
        self.end_id = tok.convert_tokens_to_ids(END_TOKEN)
        self.image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        self.pad_id = tok.pad_token_id
        image_size = processor.image_processor.size["height"]
        patch = processor.patch_size
        self.n_image_tokens = (image_size // patch) ** 2  # CLS dropped

    @lru_cache(maxsize=50_000)
    def ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- images -----------------------------------------------------------------------
    def scene(self, layout=None, n_objects: int | None = None) -> scenes.Scene:
        size = int(self.rng.choice(self.augment.render_sizes))
        style = scenes.SceneStyle(supersample=2 if size <= 128 else 1)
        if self.varied_share > 0 and self.rng.random() < self.varied_share:
            style = replace(scenes.VARIED_STYLE, supersample=style.supersample)
        return scenes.generate_scene(self.rng, size=size, n_objects=n_objects, style=style, layout=layout)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        lo, hi = self.augment.jpeg_quality
        images = [scenes.jpeg_roundtrip(im, int(self.rng.integers(lo, hi + 1)))
                  if self.rng.random() < self.augment.jpeg_probability else im for im in images]
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    # --- sequences --------------------------------------------------------------------
    def _pad(self, seqs: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)  # (B, T)
        lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labels)):  # right padding for training
            ids[i, : len(s)] = torch.tensor(s)
            lab[i, : len(l)] = torch.tensor(l)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": mask}

    def dialogue(self, turns: list[tuple[str, str]], with_image: bool,
                 context: str = "", loss_on_prompt: bool = False) -> tuple[list[int], list[int]]:
        """ids and labels of a conversation; the image (if any) opens the first user turn."""
        seq: list[int] = []
        lab: list[int] = []
        for i, (question, answer) in enumerate(turns):
            prompt = [self.user_id]
            if i == 0 and with_image:
                prompt += [self.image_id] * self.n_image_tokens
            prompt += list(self.ids((context if i == 0 else "") + question))
            prompt += [self.end_id, self.assistant_id]
            reply = list(self.ids(answer)) + [self.end_id]
            seq += prompt + reply
            lab += (prompt if loss_on_prompt else [IGNORE] * len(prompt)) + reply
        if loss_on_prompt:  # next-token LM: do not predict the image placeholders
            lab = [IGNORE if t == self.image_id else t for t in lab]
        return seq, lab

    def instruction_batch(self, batch_size: int, max_turns: int, form_weights: dict[str, float],
                          where_confusable: float = 0.0,
                          object_weights: tuple[float, ...] | None = None,
                          answer_weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Stage 4: image + 1..max_turns questions, loss on the answers only.

        With probability `where_confusable` a "where" question asks about an object that
        shares its colour or shape with another one, when the scene has such an object.
        `object_weights` weighs scenes of 1, 2, 3, 4 objects (None: uniform, as drawn by
        the scene generator; then no extra random number is drawn). `answer_weights` (form ->
        weight, 1 for forms not named) adds "loss_weights", one per token, for weighted_loss;
        it draws no random number, so the batches are the same with or without it."""
        forms = list(form_weights)
        if answer_weights is not None and not set(answer_weights) <= set(forms):
            raise ValueError(f"answer_weights names forms that are never asked: "
                             f"{sorted(set(answer_weights) - set(forms))}; asked: {forms}")
        probs = np.array([form_weights[f] for f in forms], dtype=float)
        probs /= probs.sum()
        counts = None
        if object_weights is not None:
            if len(object_weights) != scenes.MAX_OBJECTS or min(object_weights) < 0 or sum(object_weights) <= 0:
                raise ValueError(f"object_weights needs {scenes.MAX_OBJECTS} weights >= 0, got {object_weights}")
            counts = np.asarray(object_weights, dtype=float) / sum(object_weights)
        images, seqs, labels = [], [], []
        token_weights: list[list[float]] = []
        for _ in range(batch_size):
            n_objects = None if counts is None else int(self.rng.choice(len(counts), p=counts)) + 1
            scene = self.scene(n_objects=n_objects)
            n_turns = int(self.rng.integers(1, max_turns + 1))
            turns: list[tuple[str, str]] = []
            turn_forms: list[str] = []
            while len(turns) < n_turns:
                form = str(self.rng.choice(forms, p=probs))
                target = None
                # (checked in this order so a 0 share, stage 4's, draws no random number)
                if form == "where" and where_confusable > 0 and self.rng.random() < where_confusable:
                    hard = scenes.confusable_objects(scene)
                    target = int(self.rng.choice(hard)) if hard else None
                qa = scenes.question_for(scene, form, self.rng, canonical=False, target=target)
                if qa is not None:
                    turns.append((qa.question, qa.answer))
                    turn_forms.append(form)
            seq, lab = self.dialogue(turns, with_image=True)
            images.append(scene.image)
            seqs.append(seq)
            labels.append(lab)
            if answer_weights is not None:
                token_weights.append(_reply_weights(lab, [answer_weights.get(f, 1.0) for f in turn_forms]))
        batch = self._pad(seqs, labels)
        if answer_weights is not None:
            batch["loss_weights"] = torch.zeros(batch["labels"].shape)
            for i, w in enumerate(token_weights):
                batch["loss_weights"][i, : len(w)] = torch.tensor(w)
        batch["pixel_values"] = self.pixels(images)
        return batch

    def caption_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Stage 3: image -> its description (feature alignment)."""
        images, seqs, labels = [], [], []
        for _ in range(batch_size):
            scene = self.scene()
            seq, lab = self.dialogue([("Describe the image.", scenes.describe(scene))], with_image=True)
            images.append(scene.image)
            seqs.append(seq)
            labels.append(lab)
        batch = self._pad(seqs, labels)
        batch["pixel_values"] = self.pixels(images)
        return batch

    def text_batch(self, batch_size: int, max_turns: int) -> dict[str, torch.Tensor]:
        """Stage 2: scene text only; the description stands where the image will be."""
        seqs, labels = [], []
        for _ in range(batch_size):
            scene = scenes.generate_scene(self.rng, size=24,
                                          style=scenes.SceneStyle(supersample=1, noise_sigma=0))
            qas = scenes.questions_for(scene, self.rng, canonical=False)
            picks = self.rng.choice(len(qas), size=min(max_turns, len(qas)), replace=False)
            turns = [(qas[int(i)].question, qas[int(i)].answer) for i in picks]
            seq, lab = self.dialogue(turns, with_image=False, context=scenes.describe(scene) + ". ",
                                     loss_on_prompt=True)
            seqs.append(seq)
            labels.append(lab)
        return self._pad(seqs, labels)

    def contrastive_batch(self, batch_size: int, twin_fraction: float) -> dict[str, torch.Tensor]:
        """Stage 1: (scene, caption) pairs; twins differ in one attribute (hard negatives).

        Also, for the region term of the loss, every object's patch weights (the share of
        its mask in each patch), the index of its image and of its name in object_names().
        """
        batch_scenes: list[scenes.Scene] = []
        n_twins = int(batch_size * twin_fraction) // 2
        for _ in range(n_twins):
            layout = scenes.random_layout(self.rng)
            batch_scenes += [self.scene(lay) for lay in (layout, scenes.perturb_layout(layout, self.rng))]
        while len(batch_scenes) < batch_size:
            batch_scenes.append(self.scene())
        seqs = [list(self.ids(scenes.describe(scene))) + [self.end_id] for scene in batch_scenes]
        batch = self._pad(seqs, seqs)
        del batch["labels"]
        batch["pixel_values"] = self.pixels([scene.image for scene in batch_scenes])
        names = object_names()
        objects = [(i, o) for i, scene in enumerate(batch_scenes) for o in scene.objects]
        batch["object_weights"] = torch.stack([self.patch_weights(o.mask) for _, o in objects])  # (O, P)
        batch["object_image"] = torch.tensor([i for i, _ in objects])
        batch["object_label"] = torch.tensor([names.index(f"a {o.name}") for _, o in objects])
        return batch

    def patch_weights(self, mask: np.ndarray) -> torch.Tensor:
        """(P,) share of the object's mask in each patch of the image grid (row-major)."""
        side = int(round(self.n_image_tokens ** 0.5))
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.BOX)
        weights = torch.from_numpy(np.asarray(small, dtype=np.float32)).flatten()
        return weights / weights.sum().clamp_min(1e-6)

    def names_batch(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Short texts (default: the object names, "a red circle", ...) tokenized for the
        contrastive text encoder."""
        seqs = [list(self.ids(name)) + [self.end_id] for name in (names or object_names())]
        batch = self._pad(seqs, seqs)
        del batch["labels"]
        return batch


def object_names() -> list[str]:
    """Every colour-shape pair as a short caption: the candidates of the region term."""
    return [f"a {color} {shape}" for color in scenes.COLORS for shape in scenes.SHAPES]
