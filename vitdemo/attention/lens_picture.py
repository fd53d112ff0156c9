"""Draw the logit lens's patch words on an image: each cell's top word in its cell.

The image is enlarged (never shrunk) until the longest word fits its cell, the grid is
outlined thinly, and each word sits on a semi-transparent dark box so it stays readable
on any colour. Pure PIL (its default font), no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitdemo.attention.layouts import Box
from vitdemo.errors import InputError

log = logging.getLogger(__name__)

FONT_SIZE = 11  # px: PIL's default (FreeType) font stays legible down to about this size
MAX_CHARS = 9  # longer words are cut with an ellipsis so cells stay small
MAX_SIDE = 2048  # never enlarge past this many pixels on the long side
BOX_ALPHA = 140  # 0..255 opacity of the box behind each word
PAD = 2  # px between a word and its box edge


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # FreeType build: a scalable font
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _short(word: str) -> str:
    word = word.replace("\n", " ").strip() or "·"
    return word if len(word) <= MAX_CHARS else word[:MAX_CHARS - 1] + "…"


def _percent(p: float) -> str:
    return "<1%" if p < 0.005 else f"{100 * p:.0f}%"


def draw_patch_words(image: Image.Image, words: Sequence[Sequence[str]], box: Box | None = None,
                     probs: np.ndarray | None = None, font_size: int = FONT_SIZE,
                     grid_lines: bool = True) -> Image.Image:
    """The image with each grid cell's word written in it (`words`: rows x cols strings over
    `box`, default the whole image; `probs`: optional (rows, cols), shown as a second line
    in percent when the cell is tall enough). Returns a new RGB image."""
    rows = len(words)
    cols = len(words[0]) if rows else 0
    if rows == 0 or cols == 0 or any(len(r) != cols for r in words):
        raise InputError(f"patch words must be a non-empty rectangular grid, got row lengths "
                         f"{[len(r) for r in words]}")
    if probs is not None and np.shape(probs) != (rows, cols):
        raise InputError(f"probs have shape {np.shape(probs)}, the words grid is {rows}x{cols}")
    box = box or (0.0, 0.0, float(image.width), float(image.height))
    font = _font(font_size)
    texts = [[_short(w) for w in row] for row in words]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max(measure.textbbox((0, 0), t, font=font)[2] for row in texts for t in row)
    line_h = measure.textbbox((0, 0), "Ag%", font=font)[3]
    # Enlarge so the widest word (and, with probs, two lines) fits a cell with room to spare.
    cell_w = (box[2] - box[0]) / cols
    cell_h = (box[3] - box[1]) / rows
    need = max((widest + 2 * PAD + 4) / cell_w,
               ((2 if probs is not None else 1) * (line_h + PAD) + 2 * PAD) / cell_h, 1.0)
    scale = min(need, MAX_SIDE / max(image.size))
    if scale < need:
        log.info("patch words: capped at %d px, long words may overflow their cells", MAX_SIDE)
    base = image.convert("RGB")
    if scale > 1.0:
        base = base.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    scale = max(scale, 1.0)
    x0, y0 = box[0] * scale, box[1] * scale
    cw, ch = cell_w * scale, cell_h * scale
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if grid_lines:
        for c in range(cols + 1):
            draw.line([(x0 + c * cw, y0), (x0 + c * cw, y0 + rows * ch)], fill=(255, 255, 255, 90), width=1)
        for r in range(rows + 1):
            draw.line([(x0, y0 + r * ch), (x0 + cols * cw, y0 + r * ch)], fill=(255, 255, 255, 90), width=1)
    show_prob = probs is not None and ch >= 2 * (line_h + PAD) + 2 * PAD
    for r in range(rows):
        for c in range(cols):
            lines = [texts[r][c]] + ([_percent(float(probs[r, c]))] if show_prob else [])
            sizes = [measure.textbbox((0, 0), t, font=font) for t in lines]
            block_w = max(s[2] for s in sizes)
            block_h = len(lines) * line_h + (len(lines) - 1) * PAD
            cx, cy = x0 + (c + 0.5) * cw, y0 + (r + 0.5) * ch
            left, top = cx - block_w / 2, cy - block_h / 2
            draw.rectangle([left - PAD, top - PAD, left + block_w + PAD, top + block_h + PAD],
                           fill=(0, 0, 0, BOX_ALPHA))
            for i, (text, size) in enumerate(zip(lines, sizes)):
                colour = (255, 255, 255, 255) if i == 0 else (200, 220, 255, 255)
                draw.text((cx - size[2] / 2, top + i * (line_h + PAD)), text, font=font, fill=colour)
    return Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
