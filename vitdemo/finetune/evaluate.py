"""Held-out evaluation for fine-tuning: token loss on the answers and greedy exact match.

Used before training (the base model: LoRA starts as a no-op), after training, and by
`python -m vitdemo eval`. Answers are generated greedily with the model's own chat
template, exactly as the chat tab would ask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from vitdemo.chat.batch_answer import greedy_answers
from vitdemo.finetune.sft import IGNORE_INDEX, collate, exact_match, prompt_part

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


def generate_answers(model: Any, processor: Any, items: Sequence[EvalItem], max_new_tokens: int = 32,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to each item's last question (the conversation up to its last answer)."""
    prompts = [prompt_part(it.messages, it.images) for it in items]
    return greedy_answers(model, processor, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)


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
