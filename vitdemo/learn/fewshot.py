"""Zero-shot versus few-shot: the same question alone, and after worked examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitdemo.chat import conversation
from vitdemo.core.engine import Engine
from vitdemo.errors import InputError


@dataclass
class ShotComparison:
    question: str
    examples: list[tuple[str, str]]
    zero_shot: str
    few_shot: str


def parse_examples(text: str) -> list[tuple[str, str]]:
    """Lines of `question => answer`; blank lines are skipped."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "=>" not in line:
            raise InputError(f"example line {number} has no '=>': write it as `question => answer`")
        question, answer = (part.strip() for part in line.split("=>", 1))
        if not question or not answer:
            raise InputError(f"example line {number} needs both a question and an answer around '=>'")
        pairs.append((question, answer))
    return pairs


def compare_shots(engine: Engine, image: Any, question: str, examples: list[tuple[str, str]],
                  gen: conversation.GenerationSettings | None = None) -> ShotComparison:
    """Answer `question` about `image` with no examples, then after the examples as earlier turns."""
    if not question.strip():
        raise InputError("type a question first")
    if not examples:
        raise InputError("give at least one example (`question => answer`) for the few-shot answer")
    gen = gen or conversation.GenerationSettings(max_new_tokens=48)
    zero = conversation.answer(engine, [conversation.user_message(question, n_images=1)], [image], gen)
    conv: conversation.Conversation = []
    for index, (q, a) in enumerate(examples):
        conv.append(conversation.user_message(q, n_images=1 if index == 0 else 0))
        conv.append(conversation.assistant_message(a))
    conv.append(conversation.user_message(question, n_images=0))
    few = conversation.answer(engine, conv, [image], gen)
    return ShotComparison(question, examples, zero, few)
