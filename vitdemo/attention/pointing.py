"""The pointing game: does the peak of a word's attention map fall on the region asked about?

For each `PointingItem` (image, question, target region) the model answers with capture on;
the map of the first answer token (the token that answers the question, computed from the
query that predicted it) is the default map (`attention.DEFAULT_SPEC`). A hit is a peak cell
whose centre lies inside the target: a box, or a pixel mask. Callers build the items from
their own data (the classroom evaluation: the asked object's scene cell). Only the first
answer token is needed, so each item costs one forward pass (prefill).

`map_kind="relevancy"` plays the same game with the gradient-weighted relevancy map of the
same first answer token (`vitdemo.attention.relevancy`: one forward and one backward pass
per item), so the two maps are compared on the same items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np

from vitdemo.attention.layouts import Box, ImageGrid
from vitdemo.attention.maps import DEFAULT_SPEC, AttentionResult, MapSpec
from vitdemo.chat.conversation import user_message
from vitdemo.errors import InputError

log = logging.getLogger(__name__)

Target = Union[Box, np.ndarray]  # a box (x0, y0, x1, y1) or a bool mask (height, width), original-image pixels
MapKind = Literal["attention", "relevancy"]  # which map of the first answer token is scored
MAP_KINDS: tuple[str, ...] = ("attention", "relevancy")


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


def question_inputs(model: Any, processor: Any, image: Any, question: str) -> dict[str, Any]:
    """One image and one question through the chat template, on the model's device."""
    from vitdemo.core.batch_inputs import to_model

    prompt = processor.apply_chat_template([user_message(question, 1)], add_generation_prompt=True, tokenize=False)
    return to_model(processor(images=[image], text=prompt, return_tensors="pt"), model)


def first_token_result(model: Any, processor: Any, image: Any, question: str, vision: bool = False) -> AttentionResult:
    """Capture for the first answer token only: one forward pass, greedy (`vision`: the vision
    encoder's attention and rollout too)."""
    from vitdemo.attention.capture import CaptureSettings, capture

    inputs = question_inputs(model, processor, image, question)
    return capture(model, processor, inputs, [image],
                   {"max_new_tokens": 1, "do_sample": False}, CaptureSettings(vision=vision), keep_special=True)


def first_token_relevancy(model: Any, processor: Any, image: Any, question: str) -> tuple[np.ndarray, ImageGrid]:
    """The relevancy map of the greedy first answer token and its grid (one forward pass to
    choose the token, one forward and backward pass to explain it)."""
    import torch

    from vitdemo.attention.layouts import build_layout
    from vitdemo.attention.relevancy import relevancy_maps

    inputs = question_inputs(model, processor, image, question)
    layout = build_layout(model.config, processor, inputs, [image])
    # generate, not the logits' argmax: the same token as the capture's (the generation
    # config's processors, e.g. suppressed tokens, apply), special tokens included.
    with torch.inference_mode():
        first = int(model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1])
    return relevancy_maps(model, processor, inputs, [first], layout, 0)[0], layout.grid(0)


def pointing_game(model: Any, processor: Any, items: Iterable[PointingItem], spec: MapSpec = DEFAULT_SPEC,
                  maps: Sequence[MapSpec] = (), map_kind: MapKind = "attention") -> dict[str, Any]:
    """Accuracy of the default map (and of any extra `maps` specs, for comparison), or with
    map_kind="relevancy" of the first answer token's relevancy map instead.

    Returns {"accuracy", "hits", "n", "map", "per_group", "others": {spec: accuracy}}.
    """
    if map_kind not in MAP_KINDS:
        raise InputError(f"map_kind must be one of {', '.join(MAP_KINDS)}, got {map_kind!r}")
    if map_kind == "relevancy" and maps:
        raise InputError(f"the {len(maps)} extra map spec(s) choose attention layers and heads; "
                         "the relevancy map has none (it uses every layer and head)")
    map_name = spec.describe()
    if map_kind == "relevancy":
        from vitdemo.attention.relevancy import METHOD

        map_name = METHOD
    specs = [spec, *maps]
    hits = np.zeros(len(specs), np.int64)
    per_group: dict[str, list[int]] = {}
    n = 0
    for item in items:
        if map_kind == "relevancy":
            relevancy_map, grid = first_token_relevancy(model, processor, item.image, item.question)
            candidates = [relevancy_map]
        else:
            result = first_token_result(model, processor, item.image, item.question)
            grid = result.grids()[0]
            candidates = [result.token_maps("answer", 0, s)[0] for s in specs]
        for k, grid_map in enumerate(candidates):
            hit = is_hit(grid_map, grid, item.target)
            hits[k] += hit
            if k == 0:
                per_group.setdefault(item.group, []).append(int(hit))
        n += 1
    if n == 0:
        raise ValueError("the pointing game needs at least one item with a target")
    report = {"accuracy": float(hits[0] / n), "hits": int(hits[0]), "n": n,
              "map": f"first answer token, {map_name}",
              "per_group": {group: float(np.mean(h)) for group, h in sorted(per_group.items())}}
    if maps:
        report["others"] = {s.describe(): float(h / n) for s, h in zip(maps, hits[1:])}
    log.info("pointing game: %d/%d = %.3f (%s)", hits[0], n, hits[0] / n, report["map"])
    return report
