"""The pointing game: does the peak of a word's attention map fall on the region asked about?

For each `PointingItem` (image, question, target region) the model answers with capture on;
the map of the first answer token (the token that answers the question, computed from the
query that predicted it) is the default map (`attention.DEFAULT_SPEC`). A hit is a peak cell
whose centre lies inside the target: a box, or a pixel mask. Callers build the items from
their own data (the classroom evaluation: the asked object's scene cell). Only the first
answer token is needed, so each item costs one forward pass (prefill).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from vitdemo.attention.layouts import Box, ImageGrid
from vitdemo.attention.maps import DEFAULT_SPEC, AttentionResult, MapSpec
from vitdemo.chat.conversation import user_message

log = logging.getLogger(__name__)

Target = Union[Box, np.ndarray]  # a box (x0, y0, x1, y1) or a bool mask (height, width), original-image pixels


@dataclass(frozen=True)
class PointingItem:
    image: Any  # PIL image
    question: str
    target: Target  # the region that counts as a hit
    group: str = "all"  # the report gives the accuracy per group too (e.g. per question form)


def peak_point(grid_map: np.ndarray, grid: ImageGrid) -> tuple[float, float]:
    """(x, y) in original-image pixels of the centre of the map's highest cell."""
    row, col = np.unravel_index(int(np.argmax(grid_map)), grid_map.shape)
    x0, y0, x1, y1 = grid.box
    cw, ch = (x1 - x0) / grid.cols, (y1 - y0) / grid.rows
    return x0 + (col + 0.5) * cw, y0 + (row + 0.5) * ch


def is_hit(grid_map: np.ndarray, grid: ImageGrid, target: Target) -> bool:
    x, y = peak_point(grid_map, grid)
    if isinstance(target, np.ndarray):
        if target.ndim != 2:
            raise ValueError(f"a target mask must be (height, width), got shape {target.shape}")
        row, col = int(y), int(x)
        return 0 <= row < target.shape[0] and 0 <= col < target.shape[1] and bool(target[row, col])
    return target[0] <= x < target[2] and target[1] <= y < target[3]


def first_token_result(model: Any, processor: Any, image: Any, question: str) -> AttentionResult:
    """Capture for the first answer token only: one forward pass, greedy."""
    from vitdemo.attention.capture import CaptureSettings, capture
    from vitdemo.core.batch_inputs import to_model

    prompt = processor.apply_chat_template([user_message(question, 1)], add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    return capture(model, processor, to_model(inputs, model), [image],
                   {"max_new_tokens": 1, "do_sample": False}, CaptureSettings(vision=False), keep_special=True)


def pointing_game(model: Any, processor: Any, items: Iterable[PointingItem], spec: MapSpec = DEFAULT_SPEC,
                  maps: Sequence[MapSpec] = ()) -> dict[str, Any]:
    """Accuracy of the default map (and of any extra `maps` specs, for comparison).

    Returns {"accuracy", "hits", "n", "map", "per_group", "others": {spec: accuracy}}.
    """
    specs = [spec, *maps]
    hits = np.zeros(len(specs), np.int64)
    per_group: dict[str, list[int]] = {}
    n = 0
    for item in items:
        result = first_token_result(model, processor, item.image, item.question)
        grid = result.grids()[0]
        for k, s in enumerate(specs):
            hit = is_hit(result.token_maps("answer", 0, s)[0], grid, item.target)
            hits[k] += hit
            if k == 0:
                per_group.setdefault(item.group, []).append(int(hit))
        n += 1
    if n == 0:
        raise ValueError("the pointing game needs at least one item with a target")
    report = {"accuracy": float(hits[0] / n), "hits": int(hits[0]), "n": n,
              "map": f"first answer token, {spec.describe()}",
              "per_group": {group: float(np.mean(h)) for group, h in sorted(per_group.items())}}
    if maps:
        report["others"] = {s.describe(): float(h / n) for s, h in zip(maps, hits[1:])}
    log.info("pointing game: %d/%d = %.3f (%s)", hits[0], n, hits[0] / n, report["map"])
    return report
