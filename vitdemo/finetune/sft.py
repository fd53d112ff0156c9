"""Supervised fine-tuning examples: conversation -> token ids, answer-only labels, batches.

The prompt is built by the processor's own chat template (so training sees exactly what
chat sends), image tokens are expanded by the processor, and the labels are -100
everywhere except on the assistant's answers (answer text + end-of-turn token): the loss
teaches the answers only, never the prompt or the image tokens.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips (prompt, image and padding tokens)


def render(processor: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _n_images(messages: list[dict]) -> int:
    return sum(p.get("type") == "image" for m in messages for p in m["content"])


def _processor_call(processor: Any, text: str, images: Sequence[Any]) -> dict[str, torch.Tensor]:
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = [list(images)]  # one sample with its images (nested: works for every processor)
    return dict(processor(**kwargs))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def encode_conversation(processor: Any, messages: list[dict], images: Sequence[Any]) -> dict[str, Any]:
    """Token ids, answer-only labels and the processor's image tensors for one conversation.

    Returns {"input_ids": list[int], "labels": list[int], "extra": {name: tensor}} where
    `extra` holds pixel_values and friends (batch dim 1) and per-token tensors such as
    mm_token_type_ids (shape (1, T)).
    """
    n_img = _n_images(messages)
    if n_img != len(images):
        raise ValueError(f"conversation has {n_img} image slots but {len(images)} images were given")
    enc = _processor_call(processor, render(processor, messages), images)
    ids: list[int] = enc.pop("input_ids")[0].tolist()
    enc.pop("attention_mask", None)
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        k = _n_images(messages[:i])
        prefix = _processor_call(processor, render(processor, messages[:i], add_generation_prompt=True), images[:k])
        start = _common_prefix(ids, prefix["input_ids"][0].tolist())
        if i == len(messages) - 1:
            end = len(ids)  # the last answer runs to the end (saves one processor call per record)
        else:
            upto = _processor_call(processor, render(processor, messages[: i + 1]), images[:k])
            end = _common_prefix(ids, upto["input_ids"][0].tolist())
        if end <= start:
            raise ValueError(f"answer {i} has no tokens after the prompt (prompt {start}, turn end {end})")
        labels[start:end] = ids[start:end]
    n_label = sum(t != IGNORE_INDEX for t in labels)
    if n_label == 0:
        raise ValueError("no answer tokens to learn from")
    return {"input_ids": ids, "labels": labels, "extra": enc}


def prompt_part(messages: list[dict], images: Sequence[Any]) -> tuple[list[dict], list[Any]]:
    """(the messages before the last answer, the images they use): what to answer for evaluation."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], list(images[:_n_images(messages[:last])])


def _pad_to(t: torch.Tensor, dim: int, size: int, value: float) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    pad_shape = list(t.shape)
    pad_shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_full(pad_shape, value)], dim=dim)


def collate(examples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids/labels/per-token tensors; stack the image tensors of every example.

    Image tensors: concatenated along dim 0 when their trailing shapes agree (LLaVA
    (n_img, 3, H, W); Qwen2-VL (patches, dim) + image_grid_thw (n_img, 3)); otherwise padded
    along dim 1 first (Idefics3 (1, n_tiles, 3, H, W), whose zero tiles the model skips).
    """
    lengths = [len(e["input_ids"]) for e in examples]
    width = max(lengths)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for b, e in enumerate(examples):
        n = lengths[b]
        input_ids[b, :n] = torch.tensor(e["input_ids"])
        labels[b, :n] = torch.tensor(e["labels"])
        attention[b, :n] = 1
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    keys = {k for e in examples for k in e["extra"]}
    for key in sorted(keys):
        tensors = [e["extra"].get(key) for e in examples]
        if any(t is None for t in tensors):
            present = [t for t in tensors if t is not None]
            if key.startswith("pixel") or key.startswith("image"):
                if present:
                    batch[key] = torch.cat(present, dim=0) if _same_tail(present) else _pad_cat(present)
                continue
            raise ValueError(f"batch mixes examples with and without {key!r}")
        if tensors[0].dim() == 2 and tensors[0].shape[0] == 1 and all(
                t.shape[1] == lengths[b] for b, t in enumerate(tensors)):
            # per-token tensor (1, T): pad like input_ids
            batch[key] = torch.cat([_pad_to(t, 1, width, 0) for t in tensors], dim=0)  # (B, T)
        elif _same_tail(tensors):
            batch[key] = torch.cat(tensors, dim=0)
        else:
            batch[key] = _pad_cat(tensors)
    return batch


def _same_tail(tensors: Sequence[torch.Tensor]) -> bool:
    return all(t.shape[1:] == tensors[0].shape[1:] for t in tensors)


def _pad_cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if any(t.dim() < 2 for t in tensors):
        raise ValueError(f"cannot batch tensors of shapes {[tuple(t.shape) for t in tensors]}")
    size = max(t.shape[1] for t in tensors)
    padded = [_pad_to(t, 1, size, 0) for t in tensors]
    if not _same_tail(padded):
        raise ValueError(f"cannot batch tensors of shapes {[tuple(t.shape) for t in tensors]}")
    return torch.cat(padded, dim=0)


def normalize_answer(text: str) -> str:
    """Exact-match normal form: NFKC, case-folded, inner spaces collapsed, end punctuation off."""
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .!?。！？,，;；:：\"'")


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)
