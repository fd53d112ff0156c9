"""Does a map rank the image's cells by how much the answer needs them? Deletion and
insertion curves (RISE, Petsiuk et al. 2018).

Deletion paints over the map's cells from the highest to the lowest (with the background
colour, `interventions.paint_boxes`) and follows the probability of the answer's first
token: a faithful map makes it fall fast (a small area under the curve). Insertion starts
from the image with every cell painted over and gives cells back in the same order: a
faithful map makes it rise fast (a large area). A random order is the baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vitdemo.attention import interventions
from vitdemo.attention.layouts import Box

log = logging.getLogger(__name__)

DEFAULT_STEPS = 16  # points of each curve after the first (0% removed)
RANDOM_ORDERS = 3  # random orders averaged for the baseline


@dataclass
class Curves:
    """Probability of the answer's first token against the share of cells removed / given back."""

    fractions: np.ndarray  # (steps + 1,) 0 .. 1
    deletion: np.ndarray  # (steps + 1,)
    insertion: np.ndarray  # (steps + 1,)

    @property
    def deletion_auc(self) -> float:
        return auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return auc(self.fractions, self.insertion)

    def to_json(self) -> dict[str, Any]:
        return {"fractions": self.fractions.round(4).tolist(), "deletion": self.deletion.round(6).tolist(),
                "insertion": self.insertion.round(6).tolist(), "deletion_auc": round(self.deletion_auc, 6),
                "insertion_auc": round(self.insertion_auc, 6)}


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule (x from 0 to 1, so the area is a mean probability)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def cell_boxes(rows: int, cols: int, box: Box) -> list[Box]:
    """Pixel box of each cell of a rows x cols grid over `box`, row-major."""
    x0, y0, x1, y1 = box
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    return [(x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch) for r in range(rows) for c in range(cols)]


def _painted(image: Image.Image, boxes: list[Box], cells: Sequence[int], fill: tuple[int, int, int]) -> Image.Image:
    out = image.convert("RGB").copy()
    if len(cells):
        from PIL import ImageDraw

        draw = ImageDraw.Draw(out)
        for i in cells:
            x0, y0, x1, y1 = boxes[int(i)]
            # Whole pixels, rounded outwards so neighbouring cells leave no seam.
            draw.rectangle((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1),
                           fill=fill)
    return out


def token_probabilities(model: Any, processor: Any, images: Sequence[Image.Image], question: str, token_id: int,
                        prefix_ids: Sequence[int] = (), batch_size: int = 17) -> np.ndarray:
    """p(token_id) as the answer token after `prefix_ids` (the answer's earlier tokens; none
    for the first), for each image asked the same question (batched)."""
    import torch

    from vitdemo.chat.conversation import user_message
    from vitdemo.core.batch_inputs import to_model

    prompt = processor.apply_chat_template([user_message(question, 1)], add_generation_prompt=True, tokenize=False)
    out: list[float] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        inputs = processor(images=[[im] for im in chunk], text=[prompt] * len(chunk), return_tensors="pt",
                           padding=True)
        if len(prefix_ids):
            prefix = torch.tensor([list(prefix_ids)] * len(chunk), dtype=inputs["input_ids"].dtype)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], prefix], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(prefix)], dim=1)
        with torch.inference_mode():
            logits = model(**to_model(inputs, model)).logits[:, -1].float()
        out += torch.softmax(logits, dim=-1)[:, token_id].cpu().tolist()
    return np.array(out, dtype=np.float64)


def curves_for_order(model: Any, processor: Any, image: Image.Image, question: str, token_id: int,
                     order: np.ndarray, boxes: list[Box], steps: int = DEFAULT_STEPS,
                     prefix_ids: Sequence[int] = ()) -> Curves:
    """Deletion and insertion curves when cells go in `order` (indices into `boxes`)."""
    n = len(order)
    counts = np.unique(np.round(np.linspace(0, n, steps + 1)).astype(int))
    fill = interventions.background_colour(image)
    deleted = [_painted(image, boxes, order[:k], fill) for k in counts]
    inserted = [_painted(image, boxes, order[k:], fill) for k in counts]
    probs = token_probabilities(model, processor, deleted + inserted, question, token_id, prefix_ids)
    return Curves(counts / n, probs[:len(counts)], probs[len(counts):])


def map_curves(model: Any, processor: Any, image: Image.Image, question: str, token_id: int,
               grid_map: np.ndarray, box: Box, steps: int = DEFAULT_STEPS, prefix_ids: Sequence[int] = ()) -> Curves:
    """Curves of one map (rows x cols over `box`): its cells from the highest value down."""
    boxes = cell_boxes(grid_map.shape[0], grid_map.shape[1], box)
    order = np.argsort(-grid_map.reshape(-1), kind="stable")
    return curves_for_order(model, processor, image, question, token_id, order, boxes, steps, prefix_ids)


def random_curves(model: Any, processor: Any, image: Image.Image, question: str, token_id: int,
                  shape: tuple[int, int], box: Box, rng: np.random.Generator, orders: int = RANDOM_ORDERS,
                  steps: int = DEFAULT_STEPS, prefix_ids: Sequence[int] = ()) -> Curves:
    """The baseline: curves averaged over `orders` random orders of the cells."""
    boxes = cell_boxes(shape[0], shape[1], box)
    runs = [curves_for_order(model, processor, image, question, token_id, rng.permutation(len(boxes)), boxes, steps,
                             prefix_ids) for _ in range(orders)]
    return Curves(runs[0].fractions, np.mean([r.deletion for r in runs], axis=0),
                  np.mean([r.insertion for r in runs], axis=0))
