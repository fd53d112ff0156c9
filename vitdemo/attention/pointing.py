"""The pointing game: does the peak of a word's attention map fall on the object asked about?

For each (image, question, target region) the model answers with capture on; the map of
the first answer token (the token that answers the question, computed from the query that
predicted it) is the default map (`attention.DEFAULT_SPEC`). A hit is a peak cell whose
centre lies inside the target region: the object's 3x3 scene cell for the classroom model.
Only the first answer token is needed, so each item costs one forward pass (prefill).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitdemo.attention.maps import DEFAULT_SPEC, AttentionResult, MapSpec
from vitdemo.attention.layouts import Box, ImageGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointingItem:
    image: Any  # PIL image
    question: str
    target: Box  # (x0, y0, x1, y1) region that counts as a hit, original-image pixels


def peak_point(grid_map: np.ndarray, grid: ImageGrid) -> tuple[float, float]:
    """(x, y) in original-image pixels of the centre of the map's highest cell."""
    row, col = np.unravel_index(int(np.argmax(grid_map)), grid_map.shape)
    x0, y0, x1, y1 = grid.box
    cw, ch = (x1 - x0) / grid.cols, (y1 - y0) / grid.rows
    return x0 + (col + 0.5) * cw, y0 + (row + 0.5) * ch


def is_hit(grid_map: np.ndarray, grid: ImageGrid, target: Box) -> bool:
    x, y = peak_point(grid_map, grid)
    return target[0] <= x < target[2] and target[1] <= y < target[3]


def scene_cell_box(cell: int, size: tuple[int, int], n: int = 3) -> Box:
    """Box of cell `cell` (row-major) of an n x n grid over an image of (width, height)."""
    row, col = divmod(cell, n)
    w, h = size[0] / n, size[1] / n
    return (col * w, row * h, (col + 1) * w, (row + 1) * h)


def _as_item(item: Any) -> PointingItem:
    """Accept PointingItem or the classroom's EvalItem (scene + qa with a target object)."""
    if isinstance(item, PointingItem):
        return item
    scene, qa = item.scene, item.qa
    obj = scene.objects[qa.target]
    return PointingItem(scene.image, qa.question, scene_cell_box(obj.cell, scene.image.size))


def first_token_result(model: Any, processor: Any, image: Any, question: str) -> AttentionResult:
    """Capture for the first answer token only: one forward pass, greedy."""
    from vitdemo.attention.capture import CaptureSettings, capture, to_model

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    return capture(model, processor, to_model(inputs, model), [image],
                   {"max_new_tokens": 1, "do_sample": False}, CaptureSettings(vision=False), keep_special=True)


def pointing_game(model: Any, processor: Any, items: Iterable[Any], spec: MapSpec = DEFAULT_SPEC,
                  maps: Sequence[MapSpec] = ()) -> dict[str, Any]:
    """Accuracy of the default map (and of any extra `maps` specs, for comparison).

    Returns {"accuracy", "hits", "n", "map", "per_form", "others": {spec: accuracy}}.
    """
    specs = [spec, *maps]
    hits = np.zeros(len(specs), np.int64)
    per_form: dict[str, list[int]] = {}
    n = 0
    for raw in items:
        item = _as_item(raw)
        result = first_token_result(model, processor, item.image, item.question)
        grid = result.grids()[0]
        for k, s in enumerate(specs):
            hit = is_hit(result.token_maps("answer", 0, s)[0], grid, item.target)
            hits[k] += hit
            if k == 0:
                form = getattr(getattr(raw, "qa", None), "form", "item")
                per_form.setdefault(form, []).append(int(hit))
        n += 1
    if n == 0:
        raise ValueError("the pointing game needs at least one item with a target")
    report = {"accuracy": float(hits[0] / n), "hits": int(hits[0]), "n": n,
              "map": f"first answer token, {spec.describe()}",
              "per_form": {form: float(np.mean(h)) for form, h in sorted(per_form.items())}}
    if maps:
        report["others"] = {s.describe(): float(h / n) for s, h in zip(maps, hits[1:])}
    log.info("pointing game: %d/%d = %.3f (%s)", hits[0], n, hits[0] / n, report["map"])
    return report
