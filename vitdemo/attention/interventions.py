"""Ways to remove part of what the model sees or computes, for asking again without it.

Image regions (a box in original-image pixels) are removed either in the pixels (painted
over with the background or the mean colour) or inside the language model (the image
tokens of the region masked out of attention, or replaced by the mean image token). A
decoder layer or one attention head can be knocked out as well. Each intervention is a
context manager around the model plus, for pixel methods, an edited image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from vitdemo.attention.layouts import Box, ImageTokenLayout
from vitdemo.errors import InputError, UnsupportedModelError

log = logging.getLogger(__name__)

RegionMethod = Literal["blank", "mean-colour", "mask-tokens", "mean-tokens"]
REGION_METHODS: tuple[str, ...] = ("blank", "mean-colour", "mask-tokens", "mean-tokens")
PIXEL_METHODS = ("blank", "mean-colour")
# A cell of the token grid counts as inside a region when the region covers this share of it
# (or holds the region's centre): small objects still lose every token that sees them.
CELL_OVERLAP = 0.25
# A region this large leaves nothing to compare the answer with.
WHOLE_IMAGE_SHARE = 0.98


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) in pixels of an image of `size` (width, height), clipped to it.

    Raises InputError for a box that is inverted, empty, outside the image or covers all of it.
    """
    if len(box) != 4:
        raise InputError(f"a box needs 4 numbers x0,y0,x1,y1 (pixels); got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise InputError("the box has a number that is not finite")
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"the box {x0:g},{y0:g},{x1:g},{y1:g} is empty or inverted: "
                         "give the top-left corner first, then the bottom-right one")
    width, height = size
    cx0, cy0, cx1, cy1 = max(0, round(x0)), max(0, round(y0)), min(width, round(x1)), min(height, round(y1))
    if cx1 <= cx0 or cy1 <= cy0:
        raise InputError(f"the box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the image ({width}x{height} pixels)")
    if (cx1 - cx0) * (cy1 - cy0) >= WHOLE_IMAGE_SHARE * width * height:
        raise InputError("the box covers the whole image: nothing would be left to compare the answer with; "
                         "draw a box around one part of it")
    return cx0, cy0, cx1, cy1


def background_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour of the image's outer two-pixel frame: the paper or screen behind things."""
    pixels = np.asarray(image.convert("RGB"))
    frame = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                            pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    return tuple(int(v) for v in np.median(frame, axis=0))  # type: ignore[return-value]


def paint_boxes(image: Image.Image, boxes: Sequence[Box], method: str) -> Image.Image:
    """A copy of the image with each box painted over: background colour ("blank") or the
    image's mean colour ("mean-colour")."""
    if method == "blank":
        fill = background_colour(image)
    elif method == "mean-colour":
        fill = tuple(int(v) for v in np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0))
    else:
        raise InputError(f"{method!r} is not a pixel method; use one of {PIXEL_METHODS}")
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    return out


def cells_in_box(layout: ImageTokenLayout, image: int, box: Box) -> np.ndarray:
    """Sequence positions of the image tokens of `image` whose cell lies in the box: covered
    for at least CELL_OVERLAP of its area, or holding the box's centre. Every tile counts
    (a global view's cells too)."""
    bx0, by0, bx1, by1 = box
    centre = ((bx0 + bx1) / 2, (by0 + by1) / 2)
    found: list[int] = []
    for tile in layout.tiles_of(image):
        tx0, ty0, tx1, ty1 = tile.box
        cw, ch = (tx1 - tx0) / tile.cols, (ty1 - ty0) / tile.rows
        for k, position in enumerate(tile.positions):
            row, col = divmod(k, tile.cols)
            x0, y0 = tx0 + col * cw, ty0 + row * ch
            x1, y1 = x0 + cw, y0 + ch
            overlap = max(0.0, min(x1, bx1) - max(x0, bx0)) * max(0.0, min(y1, by1) - max(y0, by0))
            holds_centre = x0 <= centre[0] < x1 and y0 <= centre[1] < y1
            if overlap >= CELL_OVERLAP * cw * ch or holds_centre:
                found.append(int(position))
    return np.array(sorted(found), dtype=np.int64)


def mask_positions(inputs: Any, positions: np.ndarray) -> Any:
    """A copy of the processor inputs whose attention mask hides `positions` from every query
    (the tokens stay in place, so the count of image tokens still matches the features)."""
    import torch

    out = dict(inputs)
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask.clone()
    mask[:, torch.as_tensor(positions, dtype=torch.long)] = 0
    out["attention_mask"] = mask
    return type(inputs)(out) if not isinstance(inputs, dict) else out


def _decoder(model: Any) -> Any:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or getattr(decoder, "layers", None) is None:
        raise UnsupportedModelError(f"cannot find the decoder layers of {type(model).__name__}")
    return decoder


@contextlib.contextmanager
def mean_tokens(model: Any, positions: np.ndarray, image_positions: np.ndarray) -> Iterator[None]:
    """While active, the decoder reads the mean image-token embedding at `positions` (the
    region's tokens carry no information of their own, but the sequence keeps its shape)."""
    import torch

    decoder = _decoder(model)
    region = torch.as_tensor(positions, dtype=torch.long)
    every = torch.as_tensor(image_positions, dtype=torch.long)

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[1] <= int(region.max()):
            return None  # a later generation step: the prompt's embeddings are already cached
        embeds = embeds.clone()
        embeds[:, region.to(embeds.device)] = embeds[:, every.to(embeds.device)].mean(dim=1, keepdim=True)
        return args, {**kwargs, "inputs_embeds": embeds}

    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def knock_out_layer(model: Any, layer: int) -> Iterator[None]:
    """While active, decoder layer `layer` passes its input through unchanged (its attention
    and MLP add nothing to the residual stream)."""
    layers = _decoder(model).layers
    if not 0 <= layer < len(layers):
        raise InputError(f"layer {layer} does not exist: the decoder has layers 0-{len(layers) - 1}")

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        hidden_in = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, tuple):
            return (hidden_in, *output[1:])
        return hidden_in

    handle = layers[layer].register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def knock_out_head(model: Any, layer: int, head: int) -> Iterator[None]:
    """While active, head `head` of decoder layer `layer` contributes nothing: its slice of the
    attention output is zeroed before the output projection."""
    layers = _decoder(model).layers
    if not 0 <= layer < len(layers):
        raise InputError(f"layer {layer} does not exist: the decoder has layers 0-{len(layers) - 1}")
    attention = getattr(layers[layer], "self_attn", None)
    o_proj = getattr(attention, "o_proj", None)
    if o_proj is None:
        raise UnsupportedModelError(f"cannot find the attention output projection of {type(model).__name__}")
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = int(text.num_attention_heads)
    if not 0 <= head < n_heads:
        raise InputError(f"head {head} does not exist: layer {layer} has heads 0-{n_heads - 1}")
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // n_heads)

    def hook(module: Any, args: tuple) -> tuple:
        attn_out = args[0].clone()  # (batch, seq, heads * head_dim)
        attn_out[..., head * head_dim:(head + 1) * head_dim] = 0
        return (attn_out, *args[1:])

    handle = o_proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def shade_cells(image: Image.Image, layout: ImageTokenLayout, positions: np.ndarray,
                image_index: int = 0) -> Image.Image:
    """The image with the cells of `positions` hatched in grey: what the token methods hid."""
    out = image.convert("RGB").copy()
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    wanted = set(int(p) for p in positions)
    for tile in layout.tiles_of(image_index):
        if tile.is_global and len(layout.tiles_of(image_index)) > 1:
            continue  # the local tiles already show the region
        tx0, ty0, tx1, ty1 = tile.box
        cw, ch = (tx1 - tx0) / tile.cols, (ty1 - ty0) / tile.rows
        for k, position in enumerate(tile.positions):
            if int(position) in wanted:
                row, col = divmod(k, tile.cols)
                x0, y0 = tx0 + col * cw, ty0 + row * ch
                draw.rectangle((x0, y0, x0 + cw - 1, y0 + ch - 1), fill=(60, 60, 60, 150), outline=(0, 0, 0, 255))
    return Image.alpha_composite(out.convert("RGBA"), overlay).convert("RGB")
