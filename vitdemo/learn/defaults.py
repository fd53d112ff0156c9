"""The Learn tab's default questions, taken from what is known about its default image.

Fixed texts ("What color is the circle?") contradicted the first example image (one
orange square). Here the questions and worked examples come from the answers recorded
for that very image: the classroom model's training record (training.json, example k is
examples/example_k.png) or the shipped examples' examples.json.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_COLOUR_QUESTION = re.compile(r"^What colou?r is the (\w+)\?$")
_EXAMPLE_NAME = re.compile(r"^example_(\d+)\.png$")


@dataclass(frozen=True)
class LearnDefaults:
    """Default texts of the Learn sections for one image."""

    question: str = "Describe the image."  # sections 1 and 4: a question the image answers
    fewshot_question: str = "Describe the picture."  # section 5: a phrasing the model never saw
    # section 5's worked examples, `question => answer` pairs that are true for the image
    fewshot_examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def fewshot_text(self) -> str:
        return "\n".join(f"{q} => {a}" for q, a in self.fewshot_examples)


def known_answers(image_path: str | Path) -> list[tuple[str, str]]:
    """(question, right answer) pairs recorded for this image ([] when none are known)."""
    path = Path(image_path)
    match = _EXAMPLE_NAME.match(path.name)
    training = path.parent.parent / "training.json"
    if match and training.is_file():
        try:
            stages = json.loads(training.read_text())["stages"]
            answers = stages[-1]["answers_after"]
            index = int(match.group(1))
            return [(a["question"], a["expected"]) for a in answers if int(a["example"]) == index]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            log.warning("cannot read the recorded answers in %s: %s", training, err)
            return []
    index_file = path.parent / "examples.json"
    if index_file.is_file():
        try:
            entries = json.loads(index_file.read_text())
            return [(e["question"], e["answer"]) for e in entries if e.get("image") == path.name and "answer" in e]
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("cannot read %s: %s", index_file, err)
    return []


def defaults_for(image_path: str | Path | None) -> LearnDefaults:
    """Questions about the image at `image_path` that agree with what it shows."""
    pairs = known_answers(image_path) if image_path else []
    if not pairs:
        return LearnDefaults()
    colour = next(((q, a, m.group(1)) for q, a in pairs if (m := _COLOUR_QUESTION.match(q))), None)
    if colour is None:
        question, _ = pairs[0]
        return LearnDefaults(question=question, fewshot_question=question,
                             fewshot_examples=[p for p in pairs[1:3]] or pairs[:1])
    question, _, shape = colour
    # Worked examples: other true facts about the same image, not the answer asked for.
    others = [(q, a) for q, a in pairs if q != question and not q.startswith("Describe")][:2]
    return LearnDefaults(question=question, fewshot_question=f"Which colour does the {shape} have?",
                         fewshot_examples=others or [(question, colour[1])])
