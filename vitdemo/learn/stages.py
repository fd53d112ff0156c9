"""The classroom model's recorded build: each stage's settings, loss curve and answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitdemo.errors import UnsupportedModelError

# What each stage teaches, for the class.
STAGE_NOTES = {
    "contrastive": "The vision encoder and a small text encoder learn to put a scene and its caption "
                   "close together, and other captions far apart (the CLIP objective).",
    "language": "The decoder reads scene text alone and learns the language: colours, shapes, "
                "places, how a question is answered.",
    "alignment": "Only the projector learns: it turns image features into vectors the frozen "
                 "decoder can read, by captioning images.",
    "instruction": "Visual instruction tuning: the whole model answers questions about images, "
                   "with the loss on the answers only.",
    "backgrounds": "A last pass of instruction tuning on pictures as people draw and photograph them "
                   "(grey, tinted and dark backgrounds, blur, objects of every size), weighted to the hardest "
                   "question (\"Where is ...?\"), with questions about what the picture does not have "
                   "(\"What color is the circle?\" without a circle: \"no circle\").",
}


@dataclass
class StageRecord:
    name: str
    note: str
    seconds: float
    curve: list[list[float]]  # [step, mean loss; the last stage's weighted by answer form]
    answers_after: list[dict]  # {"example", "question", "expected", "answer"}
    extra: dict  # stage-specific figures (zero-shot accuracy, held-out checks)


def load_stages(model_dir: Path) -> list[StageRecord]:
    path = Path(model_dir) / "training.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"no training record at {path}: the stages view needs the classroom model (assets/classroom)")
    record = json.loads(path.read_text())
    out = []
    for stage in record["stages"]:
        extra = {k: v for k, v in stage.items() if k not in {"name", "settings", "curve", "answers_after", "seconds"}}
        out.append(StageRecord(stage["name"], STAGE_NOTES.get(stage["name"], ""), stage["seconds"],
                               stage["curve"], stage.get("answers_after", []), extra))
    return out


def readable_answer(answer: str) -> str:
    """An answer as a class can read it: an untrained decoder emits stray bytes that are
    not whole characters (shown as U+FFFD); say so instead of printing a row of them."""
    broken = answer.count("\ufffd")
    if broken and broken >= len(answer.replace(" ", "")) / 2:
        return "(no words yet: untrained decoder, stray bytes)"
    return answer
