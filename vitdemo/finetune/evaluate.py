"""Held-out evaluation for fine-tuning: token loss on the answers and greedy exact match.

Used before training (the base model: LoRA starts as a no-op), after training, and by
`python -m vitdemo eval`. Answers are generated greedily with the model's own chat
template, exactly as the chat tab would ask.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from vitdemo.finetune.sft import IGNORE_INDEX, collate, encode_prompt, exact_match

logger = logging.getLogger(__name__)


@dataclass
class EvalItem:
    """One held-out example: the conversation, its images (PIL) and its encoded form."""

    id: str
    messages: list[dict]
    images: list[Any]  # PIL images, in order of the {"type": "image"} entries
    encoded: dict[str, Any] | None = None  # sft.encode_conversation output (for the loss)

    @property
    def question(self) -> str:
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        user = self.messages[last - 1]
        return "".join(p["text"] for p in user["content"] if p["type"] == "text")

    @property
    def reference(self) -> str:
        last = [m for m in self.messages if m["role"] == "assistant"][-1]
        return "".join(p["text"] for p in last["content"] if p["type"] == "text")


@dataclass
class EvalResult:
    loss: float | None  # mean token loss on the answers (None without encoded examples)
    exact_match: float  # fraction of answers equal to the reference (normalised)
    n: int  # examples evaluated
    answers: list[str] = field(default_factory=list)  # generated answers, in item order

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "exact_match": self.exact_match, "n": self.n}


def model_device(model: Any) -> torch.device:
    return next(p.device for p in model.parameters())


@torch.no_grad()
def eval_loss(model: Any, items: Sequence[EvalItem], pad_token_id: int, batch_size: int = 8) -> float | None:
    """Mean cross-entropy per answer token over all items (token-weighted, not batch-weighted)."""
    encoded = [it.encoded for it in items if it.encoded is not None]
    if not encoded:
        return None
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    try:
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start:start + batch_size], pad_token_id)
            labels = batch.pop("labels").to(device)  # (B, T)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits.float()  # (B, T, V)
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(T-1), V)
            shift_labels = labels[:, 1:].reshape(-1)  # (B*(T-1),)
            loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX,
                                                     reduction="sum")
            total += float(loss)
            count += int((shift_labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _generation_config(model: Any, max_new_tokens: int) -> Any:
    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens = max_new_tokens
    gc.do_sample = False
    gc.num_beams = 1
    for name in ("temperature", "top_p", "top_k"):
        setattr(gc, name, None)
    # A base model's suppressed tokens (e.g. non-ASCII bytes) must not forbid what the data
    # teaches. An empty list, not None: generate() fills None from the model's own config.
    gc.suppress_tokens = []
    gc.begin_suppress_tokens = []
    return gc


@torch.no_grad()
def generate_answers(model: Any, processor: Any, items: Sequence[EvalItem], max_new_tokens: int = 32,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to each item's last question (left-padded batches; one by one on failure)."""
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    gc = _generation_config(model, max_new_tokens)
    device = model_device(model)
    answers: list[str] = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            try:
                answers.extend(_generate_batch(model, processor, chunk, gc, device))
            except (ValueError, RuntimeError) as exc:
                if len(chunk) == 1:
                    raise
                logger.debug("batched generation failed (%s); one by one", exc)
                for it in chunk:
                    answers.extend(_generate_batch(model, processor, [it], gc, device))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers


def _generate_batch(model: Any, processor: Any, items: Sequence[EvalItem], gc: Any, device: torch.device) -> list[str]:
    prompts, images = zip(*(encode_prompt(processor, it.messages, it.images) for it in items))
    kwargs: dict[str, Any] = {"text": list(prompts), "return_tensors": "pt", "padding": True}
    if any(images):
        if not all(images):
            raise ValueError("batch mixes items with and without images")
        kwargs["images"] = [list(im) for im in images]
    enc = processor(**kwargs)
    enc = {k: v.to(device) for k, v in enc.items()}
    out = model.generate(**enc, generation_config=gc)  # (B, T_prompt + new)
    new = out[:, enc["input_ids"].shape[1]:]
    return [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate(model: Any, processor: Any, items: Sequence[EvalItem], *, max_new_tokens: int = 32,
             batch_size: int = 8) -> EvalResult:
    """Loss (if items are encoded) and exact match of greedy answers on `items`."""
    if not items:
        return EvalResult(None, 0.0, 0, [])
    pad = processor.tokenizer.pad_token_id
    if pad is None:
        pad = processor.tokenizer.eos_token_id
    loss = eval_loss(model, items, pad, batch_size)
    answers = generate_answers(model, processor, items, max_new_tokens, batch_size)
    hits = sum(exact_match(a, it.reference) for a, it in zip(answers, items))
    return EvalResult(loss, hits / len(items), len(items), answers)
