"""Attention maps from captured text->image attention: the data, the map math, rollout.

`AttentionResult` holds what a capture pass kept (see `vitdemo.attention.capture`): for every
answer token and every prompt token, per layer and head, the attention from that query to
the image tokens, plus optional vision-encoder attention. Maps are computed from it on
demand with a `MapSpec` (which layers, which heads), so the UI can switch layer/head
without running the model again. Pure numpy; no torch, no gradio.

Convention: the map of answer token k is the attention of the query that *predicted* it
(the last prompt position for the first answer token, answer token k-1 after that), so a
word's map is ready the moment the word streams in, and it shows where the model looked
while choosing that word.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from vitdemo.errors import InputError, UnsupportedModelError
from vitdemo.attention.layouts import ImageGrid, ImageTokenLayout

log = logging.getLogger(__name__)

TokenKind = Literal["answer", "prompt"]


@dataclass(frozen=True)
class MapSpec:
    """Which part of the captured attention a map averages."""

    layers: tuple[int, ...] | None = None  # None: mean over all layers; negative indices count from the end
    heads: tuple[int, ...] | None = None  # None: mean over all heads
    # With layers=None: only the middle third of the layers (see middle_layers), where the
    # decoder has read the image and not yet turned to writing the answer.
    middle: bool = False
    # Divide by the attention mass that reached the image tokens, so a map is a distribution
    # over image cells (heads that mostly attend to text then do not fade out).
    renormalise: bool = True
    # Normalise each head's image attention before averaging, so every head counts the
    # same; False weights heads by how much of their attention reaches the image.
    equal_heads: bool = False

    def layer_index(self, n_layers: int) -> tuple[int, ...] | None:
        """The layers this spec averages, for a model with n_layers (None = all)."""
        if self.layers is None and self.middle:
            return middle_layers(n_layers)
        return self.layers

    def describe(self) -> str:
        def name(word: str, index: tuple[int, ...] | None) -> str:
            if index is None:
                return f"all {word}s"
            return f"{word}{'s' if len(index) > 1 else ''} " + ",".join(map(str, index))

        layers = "middle layers" if self.layers is None and self.middle else name("layer", self.layers)
        return f"{layers}, {name('head', self.heads)}" + (", heads weighted equally" if self.equal_heads else "")


def middle_layers(n_layers: int) -> tuple[int, ...]:
    """The middle third of n_layers (at least one): 3 -> (1,), 24 -> 8..15, 32 -> 10..20."""
    low = n_layers // 3
    high = max(low + 1, (2 * n_layers) // 3)
    return tuple(range(low, min(high, n_layers)))


# The default map: the answer token's attention to the image tokens in the middle third of
# the decoder's layers, averaged over heads and renormalised over the image tokens (heads
# weighted by how much they look at the image). Chosen with the pointing game
# (vitdemo/attention/pointing.py) on the shipped classroom model, on validation scenes (seed
# HELD_OUT_SEED + 7, not the reported held-out set): middle layer 90%, all layers 84%,
# first or last layer alone 28-30%, single heads <= 67%. Earlier checkpoints had compared
# all layers with rollout, value-norm weighting and gradient relevancy: none beat it.
DEFAULT_SPEC = MapSpec(middle=True)


@dataclass
class VisionAttention:
    """Vision-encoder attention per tile of pixel_values (the order of `layout.tiles`)."""

    cls_rows: np.ndarray | None  # (n_tiles, layers, heads, n_patches) CLS query; None without a CLS token
    mean_rows: np.ndarray  # (n_tiles, layers, heads, n_patches) mean over all queries
    rollout: np.ndarray  # (n_tiles, 2, n_patches): rollout row of [CLS or mean, mean query]
    n_prefix: int  # tokens before the patch grid (1 for a CLS token, else 0)
    grid: tuple[int, int]  # (rows, cols) of each tile's patch grid


@dataclass
class AttentionResult:
    """Everything the maps need from one answer (batch size 1)."""

    layout: ImageTokenLayout
    answer_ids: list[int]
    answer_tokens: list[str]  # decoded text of each answer token
    prompt_tokens: list[str]  # decoded text of each non-image prompt token
    prompt_positions: np.ndarray  # (n_prompt_text,) sequence positions of those tokens
    answer_attn: np.ndarray  # (n_answer, layers, heads, n_image_tokens) float32
    prompt_attn: np.ndarray  # (n_prompt_text, layers, heads, n_image_tokens) float32
    vision: VisionAttention | None = None
    vision_error: str | None = None  # why the vision view is missing, for the UI
    answer: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.answer_attn.shape[1] if len(self.answer_attn) else self.prompt_attn.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.answer_attn.shape[2] if len(self.answer_attn) else self.prompt_attn.shape[2])

    def grids(self) -> list[ImageGrid]:
        return [self.layout.grid(i) for i in range(self.layout.n_images)]

    def _rows(self, kind: TokenKind) -> np.ndarray:
        if kind == "answer":
            return self.answer_attn
        if kind == "prompt":
            return self.prompt_attn
        raise InputError(f"token kind must be 'answer' or 'prompt', got {kind!r}")

    def token_vector(self, kind: TokenKind, index: int, spec: MapSpec = DEFAULT_SPEC) -> np.ndarray:
        """(n_image_tokens,) attention of one token to every image token, averaged per `spec`."""
        rows = self._rows(kind)
        if not -len(rows) <= index < len(rows):
            raise InputError(f"{kind} token {index} does not exist; there are {len(rows)}")
        return select(rows[index], spec)

    def token_maps(self, kind: TokenKind, index: int, spec: MapSpec = DEFAULT_SPEC) -> list[np.ndarray]:
        """One (rows, cols) map per image for one answer or prompt token."""
        return self.layout.image_maps(self.token_vector(kind, index, spec))

    def head_maps(self, kind: TokenKind, index: int, layers: tuple[int, ...] | None,
                  image: int = 0) -> np.ndarray:
        """(heads, rows, cols) maps of every head, layers averaged, for one image."""
        rows = self._rows(kind)[index]  # (layers, heads, n_img)
        per_head = _pick(rows, layers, axis=0).mean(axis=0)  # (heads, n_img)
        per_head = per_head / np.maximum(per_head.sum(-1, keepdims=True), 1e-12)
        return self.layout.image_maps(per_head)[image]

    def image_share(self, kind: TokenKind = "answer") -> np.ndarray:
        """(layers, heads): share of each head's attention that lands on image tokens,
        averaged over the tokens of `kind`."""
        rows = self._rows(kind)
        if len(rows) == 0:
            return np.zeros((self.n_layers, self.n_heads), np.float32)
        return rows.sum(-1).mean(0)  # (n, L, H, n_img) -> (L, H)

    def default_maps(self) -> list[list[np.ndarray]]:
        """Per answer token, per image: the default (rows, cols) map."""
        return [self.token_maps("answer", k) for k in range(len(self.answer_attn))]

    def vision_maps(self, image: int, layer: int | None, head: int | None,
                    query: Literal["cls", "mean"] = "cls") -> np.ndarray:
        """(rows, cols) vision-encoder attention of one image's whole-image tile."""
        vision = self._vision()
        rows = vision.cls_rows if query == "cls" else vision.mean_rows
        if rows is None:
            raise UnsupportedModelError("this vision encoder has no CLS token; use the mean query")
        tile = self._vision_tile(image)
        per_layer = rows[tile]  # (layers, heads, n_patches)
        layers = None if layer is None else (layer,)
        heads = None if head is None else (head,)
        vec = _pick(_pick(per_layer, layers, axis=0), heads, axis=1).mean(axis=(0, 1))  # (n_patches,)
        return vec[vision.n_prefix:].reshape(vision.grid)  # (rows, cols)

    def rollout_map(self, image: int, query: Literal["cls", "mean"] = "cls") -> np.ndarray:
        """(rows, cols) attention rollout of one image's whole-image tile."""
        vision = self._vision()
        row = 0 if query == "cls" and vision.n_prefix else 1
        vec = vision.rollout[self._vision_tile(image), row]  # (n_patches,)
        return vec[vision.n_prefix:].reshape(vision.grid)  # (rows, cols)

    def vision_box(self, image: int) -> tuple[float, float, float, float]:
        return self.layout.tiles[self._vision_tile(image)].box

    def _vision(self) -> VisionAttention:
        if self.vision is None:
            raise UnsupportedModelError(self.vision_error or "no vision-encoder attention was captured")
        return self.vision

    def _vision_tile(self, image: int) -> int:
        """Index (in layout.tiles) of the tile that shows the whole image."""
        tiles = [k for k, t in enumerate(self.layout.tiles) if t.image == image]
        if not tiles:
            raise InputError(f"image {image} does not exist; there are {self.layout.n_images}")
        globals_ = [k for k in tiles if self.layout.tiles[k].is_global]
        return globals_[0] if globals_ else tiles[0]

    def to_json(self) -> dict[str, Any]:
        """Answer, tokens, grids and each answer token's default map (rows x cols floats)."""
        return {
            "answer": self.answer,
            "tokens": self.answer_tokens,
            "grid": [[g.rows, g.cols] for g in self.grids()],
            "boxes": [list(g.box) for g in self.grids()],
            "map_spec": DEFAULT_SPEC.describe(),
            # Per answer token: the default map of the first image (rows x cols floats) ...
            "maps": [per_image[0].astype(float).round(6).tolist() for per_image in self.default_maps()],
            # ... and of every image, for messages with several.
            "maps_per_image": [[m.astype(float).round(6).tolist() for m in per_image] for per_image in self.default_maps()],
            "prompt_tokens": self.prompt_tokens,
            "architecture": self.layout.architecture,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Raw numbers for .npz export."""
        arrays = {
            "answer_attn": self.answer_attn,  # (n_answer, layers, heads, n_image_tokens)
            "prompt_attn": self.prompt_attn,  # (n_prompt_text, layers, heads, n_image_tokens)
            "image_token_positions": self.layout.positions,
            "prompt_positions": self.prompt_positions,
            "answer_ids": np.asarray(self.answer_ids, np.int64),
            "image_share": self.image_share(),
        }
        for i, per_image in enumerate(zip(*self.default_maps()) if len(self.answer_attn) else []):
            arrays[f"default_maps_image{i}"] = np.stack(per_image)  # (n_answer, rows, cols)
        if self.vision is not None:
            arrays["vision_mean_rows"] = self.vision.mean_rows
            arrays["vision_rollout"] = self.vision.rollout
            if self.vision.cls_rows is not None:
                arrays["vision_cls_rows"] = self.vision.cls_rows
        return arrays


def _pick(values: np.ndarray, index: tuple[int, ...] | None, axis: int) -> np.ndarray:
    if index is None:
        return values
    size = values.shape[axis]
    for i in index:
        if not -size <= i < size:
            raise InputError(f"index {i} out of range: there are {size} ({'layers' if axis == 0 else 'heads'})")
    return np.take(values, list(index), axis=axis)


def select(rows: np.ndarray, spec: MapSpec) -> np.ndarray:
    """(layers, heads, n_img) -> (n_img,) per spec."""
    picked = _pick(_pick(rows, spec.layer_index(rows.shape[0]), axis=0), spec.heads, axis=1)  # (l, h, n_img)
    if spec.equal_heads:
        picked = picked / np.maximum(picked.sum(-1, keepdims=True), 1e-12)
    vec = picked.mean(axis=(0, 1))
    if spec.renormalise:
        vec = vec / max(float(vec.sum()), 1e-12)
    return vec.astype(np.float32)


def rollout_step(result: np.ndarray, attn: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """One layer of attention rollout: (..., N, N) running product times this layer's
    head-averaged (..., N, N) attention with residual*I added and rows renormalised."""
    n = attn.shape[-1]
    step = residual * np.eye(n) + (1 - residual) * attn.astype(np.float64)
    step = step / step.sum(-1, keepdims=True)
    return step @ result


def rollout(layer_attn: list[np.ndarray], residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) over layers given in forward order.

    Each (N, N) head-averaged attention A becomes residual*I + (1-residual)*A, rows
    renormalised, and the product R = A_L ... A_1 says how much each input token
    contributes to each output token.
    """
    result = np.eye(layer_attn[0].shape[-1], dtype=np.float64)
    for attn in layer_attn:
        result = rollout_step(result, attn, residual)
    return result

