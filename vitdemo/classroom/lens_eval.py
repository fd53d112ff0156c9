"""Logit lens on held-out scenes: per layer, do object patches decode to the object's words?

For each held-out scene, one forward pass over the prompt (no answer) gives every image
token's residual stream; the logit lens (`vitdemo.attention.logit_lens`) decodes each at
every layer. An *object patch* is a cell of the layout's grid whose area is mostly (more
than `min_cover`) covered by one object's mask; per layer we count the object patches
whose top decoded token is that object's colour, its shape, or either.

Matching: the token's text, stripped and lowercased, equals the word, or is a piece of at
least `min_prefix` characters that starts it (a BPE tokenizer may split "triangle" into
"tri" + "angle"; a lone "a" or "re" never counts). The classroom tokenizer has every colour
and shape as one token, so there the rule is exact match.

Controls: object patches whose top token is *any* colour word (right or wrong), and
background patches (no object pixel at all) whose top token is any colour or shape word,
so a layer that writes colour words everywhere does not look like it reads objects.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitdemo.attention.layouts import Box, build_layout
from vitdemo.attention.logit_lens import patch_words, run_lens
from vitdemo.chat.conversation import build_inputs, user_message
from vitdemo.classroom import evaluate, scenes
from vitdemo.core.batch_inputs import to_model
from vitdemo.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LensEvalSettings:
    """What `logit-lens-classroom` measures."""

    n_scenes: int = 100  # held-out scenes (evaluate.held_out_items)
    seed: int = evaluate.HELD_OUT_SEED  # the fixed held-out seed
    min_cover: float = 0.5  # an object patch: more than this share of its cell is the object's mask
    min_prefix: int = 3  # a shorter piece than this never counts as a prefix of a word
    # The prompt's text comes after the image in the classroom template, so image-token states
    # do not depend on it; a fixed canonical question keeps the pass identical across scenes.
    question: str = "Describe the image."
    top_words: int = 5  # most frequent decoded words on object patches, listed per layer

    def validate(self) -> None:
        if self.n_scenes < 1:
            raise InputError(f"--scenes must be at least 1, got {self.n_scenes}")
        if not 0.0 <= self.min_cover < 1.0:
            raise InputError(f"--min-cover must be in [0, 1), got {self.min_cover}")
        if self.min_prefix < 1:
            raise InputError(f"min_prefix must be at least 1, got {self.min_prefix}")


def word_match(token: str, word: str, min_prefix: int = 3) -> bool:
    """The decoded token names `word`: equal after strip + lowercase, or a starting piece of
    at least `min_prefix` characters."""
    piece, word = token.strip().lower(), word.lower()
    return piece == word or (len(piece) >= min_prefix and word.startswith(piece))


def cell_coverage(mask: np.ndarray, box: Box, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) share of each grid cell over `box` that `mask` (H, W bool) covers."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    xs = np.clip(np.round(np.linspace(x0, x1, cols + 1)).astype(int), 0, w)  # (cols + 1,) cell edges
    ys = np.clip(np.round(np.linspace(y0, y1, rows + 1)).astype(int), 0, h)  # (rows + 1,)
    cover = np.zeros((rows, cols), dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            cell = mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            # Part of a cell outside the image (a padded box) is counted as uncovered.
            area = ((y1 - y0) / rows) * ((x1 - x0) / cols)
            cover[r, c] = float(cell.sum()) / area if area > 0 else 0.0
    return cover


def object_cells(scene: scenes.Scene, box: Box, rows: int, cols: int,
                 min_cover: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) index of the object that covers more than `min_cover` of each cell (-1: none)
    and a (rows, cols) bool of background cells (no object pixel at all)."""
    owner = np.full((rows, cols), -1, dtype=np.int64)
    any_cover = np.zeros((rows, cols), dtype=np.float64)
    for k, obj in enumerate(scene.objects):
        cover = cell_coverage(obj.mask, box, rows, cols)
        owner[cover > min_cover] = k
        any_cover += cover
    return owner, any_cover == 0


def _unique_scenes(items: Sequence[evaluate.SceneQuestion]) -> list[scenes.Scene]:
    seen: dict[int, scenes.Scene] = {}
    for item in items:
        seen.setdefault(id(item.scene), item.scene)
    return list(seen.values())


def evaluate_lens(model: Any, processor: Any, settings: LensEvalSettings = LensEvalSettings()) -> dict[str, Any]:
    """Per layer, the share of object patches whose top lens word is the object's colour,
    its shape or either, and the background control (see the module docstring)."""
    settings.validate()
    start = time.time()
    tokenizer = getattr(processor, "tokenizer", processor)
    vocabulary = list(scenes.COLORS) + list(scenes.SHAPES)
    held = _unique_scenes(evaluate.held_out_items(settings.n_scenes, settings.seed))
    per_layer: list[dict[str, Any]] | None = None
    n_object = n_background = 0
    for scene in held:
        images = [scene.image]
        inputs = build_inputs(processor, [user_message(settings.question, 1)], images)
        layout = build_layout(model.config, processor, inputs, images)
        lens = run_lens(model, to_model(inputs, model), [])
        if per_layer is None:
            per_layer = [{"colour": 0, "shape": 0, "either": 0, "any_colour": 0, "background": 0, "words": Counter()}
                         for _ in range(lens.n_layers + 1)]
        grid = layout.grid(0)
        owner, background = object_cells(scene, grid.box, grid.rows, grid.cols, settings.min_cover)
        n_object += int((owner >= 0).sum())
        n_background += int(background.sum())
        for layer, tally in enumerate(per_layer):
            words = patch_words(lens, tokenizer, layout, layer, images=[0])[0].words
            for r, c in zip(*np.nonzero(owner >= 0)):
                obj = scene.objects[owner[r, c]]
                colour = word_match(words[r][c], obj.color, settings.min_prefix)
                shape = word_match(words[r][c], obj.shape, settings.min_prefix)
                tally["colour"] += colour
                tally["shape"] += shape
                tally["either"] += colour or shape
                tally["any_colour"] += any(word_match(words[r][c], w, settings.min_prefix) for w in scenes.COLORS)
                tally["words"][words[r][c]] += 1
            for r, c in zip(*np.nonzero(background)):
                tally["background"] += any(word_match(words[r][c], w, settings.min_prefix) for w in vocabulary)
    assert per_layer is not None  # validate() guarantees at least one scene
    if n_object == 0:
        raise InputError(f"no grid cell of {len(held)} scenes is more than {settings.min_cover:.0%} "
                         "covered by one object; lower --min-cover")
    layers = []
    for layer, tally in enumerate(per_layer):
        layers.append({
            "layer": layer,
            "name": "embeddings" if layer == 0 else f"layer {layer}",
            "colour": round(tally["colour"] / n_object, 4),
            "shape": round(tally["shape"] / n_object, 4),
            "either": round(tally["either"] / n_object, 4),
            "any_colour": round(tally["any_colour"] / n_object, 4),
            "background_any_word": round(tally["background"] / max(n_background, 1), 4),
            "top_words": [[w, round(n / n_object, 4)] for w, n in tally["words"].most_common(settings.top_words)],
        })
    report = {
        "scenes": len(held), "seed": settings.seed, "min_cover": settings.min_cover,
        "match": f"stripped lowercase token == word, or a prefix piece of >= {settings.min_prefix} characters",
        "object_patches": n_object, "background_patches": n_background,
        "layers": layers, "seconds": round(time.time() - start, 1),
    }
    log.info("logit lens on %d scenes: %d object patches, %.1fs", len(held), n_object, report["seconds"])
    return report


def evaluate_lens_folder(folder: Path, settings: LensEvalSettings = LensEvalSettings()) -> dict[str, Any]:
    """`evaluate_lens` on a saved classroom model (the shipped one by default in the CLI)."""
    from vitdemo.classroom.report import load_classroom

    settings.validate()  # before the model loads
    model, processor = load_classroom(folder)
    return {"model": str(folder), **evaluate_lens(model, processor, settings)}
