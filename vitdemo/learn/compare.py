"""Base model versus a fine-tuned adapter: the same question, both answers, both maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitdemo.core.engine import Engine
from vitdemo.errors import InputError
from vitdemo.paths import ADAPTERS_DIR


@dataclass
class AdapterComparison:
    question: str
    base_answer: str
    tuned_answer: str
    base_map: np.ndarray  # (rows, cols) default map of the first answer token, base model
    tuned_map: np.ndarray  # (rows, cols) the same for the tuned model
    box: tuple[float, float, float, float]  # where the map lies on the image

    @property
    def difference(self) -> np.ndarray:
        """tuned - base: positive where the tuned model looks more."""
        return self.tuned_map - self.base_map


def _answer_with_map(engine: Engine, image: Image.Image, question: str, adapter: str | None):
    from vitdemo.chat import conversation
    from vitdemo.attention.capture import capture
    from vitdemo.core.batch_inputs import to_model
    from vitdemo.attention.layouts import build_layout

    conv = [conversation.user_message(question, n_images=1)]
    inputs = conversation.build_inputs(engine.processor, conv, [image])
    layout = build_layout(engine.model.config, engine.processor, inputs, [image])
    gen = conversation.GenerationSettings(max_new_tokens=48)
    with engine.locked(adapter=adapter) as model:
        result = capture(model, engine.processor, to_model(inputs, model), [image], gen.generate_kwargs())
    return result.answer.strip(), result.token_maps("answer", 0)[0], result.grids()[0].box


def compare_adapter(engine: Engine, image: Image.Image, question: str, adapter: str) -> AdapterComparison:
    """Both answers with the default map of their first answer token (the word that decides)."""
    if not question.strip():
        raise InputError("type a question first")
    if not adapter:
        raise InputError("choose a fine-tuned adapter to compare with the base model")
    # Each call names its weights (adapter= per call), so nothing is restored afterwards:
    # the server default (engine.use_adapter) is not this user's to change.
    tuned_answer, tuned_map, _ = _answer_with_map(engine, image, question, adapter)
    base_answer, base_map, box = _answer_with_map(engine, image, question, None)
    return AdapterComparison(question, base_answer, tuned_answer, base_map, tuned_map, box)


def available_adapters(home: Any, owner: Any = None) -> list[tuple[str, str]]:
    """(label, folder) of shipped example adapters and the finished jobs' adapters that `owner`
    (a vitdemo.finetune.owners.Owner, None = nobody in particular) may see: their own and shared ones."""
    from vitdemo.finetune.jobs import list_jobs
    from vitdemo.finetune.owners import can_see

    found: list[tuple[str, str]] = []
    shipped = ADAPTERS_DIR
    for config in sorted(shipped.glob("*/adapter_config.json")):
        found.append((f"example: {config.parent.name}", str(config.parent)))
    if home:
        for job in sorted(list_jobs(home), key=lambda j: j["id"]):
            if job["has_adapter"] and can_see(job, owner):
                mine = owner is not None and job.get("owner") == owner.id
                found.append((f"job {job['id']}" + ("" if mine else " (shared)" if job.get("shared") else ""),
                              str(Path(job["dir"]) / "adapter")))
    return found
