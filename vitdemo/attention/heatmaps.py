"""Heatmaps on the original image: overlays, colour bars, head grids, share plots, export.

Pure numpy + PIL + matplotlib colormaps (no pyplot state, no gradio). A map is a
rows x cols array of attention that covers `box` of the original image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitdemo.errors import InputError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

DEFAULT_COLORMAP = "jet"
COLORMAPS: tuple[str, ...] = ("jet", "viridis", "inferno", "magma", "plasma", "turbo", "hot", "gray")


def colormap(name: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise InputError(f"unknown colormap {name!r}; try one of {', '.join(COLORMAPS)}") from None


def normalise(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min and max (a flat map becomes all zeros)."""
    values = np.asarray(values, dtype=np.float32)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi - lo <= 1e-12:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def map_on_image(grid_map: np.ndarray, box: Box, size: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Resample a rows x cols map onto the (height, width) pixels of the original image.

    Pixels outside `box` (a centre crop left them out) are NaN. Nearest keeps cells honest;
    `smooth` uses bilinear interpolation.
    """
    width, height = size
    x0, y0, x1, y1 = box
    bw, bh = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    resample = Image.BILINEAR if smooth else Image.NEAREST
    patch = np.asarray(Image.fromarray(np.asarray(grid_map, np.float32), mode="F").resize((bw, bh), resample))
    canvas = np.full((height, width), np.nan, dtype=np.float32)
    # Paste the box, clipped to the image (a padded-square box reaches outside it).
    ox, oy = round(x0), round(y0)
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    dx1, dy1 = min(width, ox + bw), min(height, oy + bh)
    if dx1 > dx0 and dy1 > dy0:
        canvas[dy0:dy1, dx0:dx1] = patch[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0]
    return canvas


def overlay(image: Image.Image, grid_map: np.ndarray, box: Box, *, cmap: str = DEFAULT_COLORMAP,
            opacity: float = 0.5, smooth: bool = False, vmin: float | None = None,
            vmax: float | None = None) -> Image.Image:
    """Blend the coloured map over the image (RGB). Values are scaled to [vmin, vmax]
    (default: the map's own min and max)."""
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"opacity must be between 0 and 1, got {opacity}")
    image = image.convert("RGB")
    pixels = map_on_image(grid_map, box, image.size, smooth)
    lo = float(np.nanmin(grid_map)) if vmin is None else vmin
    hi = float(np.nanmax(grid_map)) if vmax is None else vmax
    scaled = np.clip((pixels - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgba = colormap(cmap)(np.nan_to_num(scaled))  # (H, W, 4) floats in [0, 1]
    alpha = np.where(np.isnan(pixels), 0.0, opacity)[..., None]  # (H, W, 1)
    base = np.asarray(image, np.float32) / 255.0
    mixed = base * (1 - alpha) + rgba[..., :3] * alpha
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        return ImageFont.load_default()


def colorbar(cmap: str = DEFAULT_COLORMAP, vmin: float = 0.0, vmax: float = 1.0, *, width: int = 320,
             height: int = 16, label: str = "attention") -> Image.Image:
    """A horizontal colour bar with its value range written under it."""
    ramp = colormap(cmap)(np.linspace(0, 1, width))[None, :, :3]  # (1, width, 3)
    bar = Image.fromarray((np.repeat(ramp, height, axis=0) * 255).astype(np.uint8))
    out = Image.new("RGB", (width, height + 18), "white")
    out.paste(bar, (0, 0))
    draw = ImageDraw.Draw(out)
    font = _font(12)
    draw.text((0, height + 2), f"{vmin:.3g}", fill="black", font=font)
    right = f"{vmax:.3g}"
    draw.text((width - draw.textlength(right, font=font), height + 2), right, fill="black", font=font)
    draw.text(((width - draw.textlength(label, font=font)) / 2, height + 2), label, fill="black", font=font)
    return out


def head_grid(image: Image.Image, head_maps: np.ndarray, box: Box, *, cmap: str = DEFAULT_COLORMAP,
              opacity: float = 0.5, thumb: int = 128, columns: int = 8,
              labels: Sequence[str] | None = None, smooth: bool = False) -> Image.Image:
    """Small overlays of (n_heads, rows, cols) maps in a grid, each scaled to its own range."""
    n = len(head_maps)
    columns = max(1, min(columns, n))
    n_rows = (n + columns - 1) // columns
    scale = thumb / max(image.size)
    small = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    small_box = tuple(v * scale for v in box)
    cell_w, cell_h = small.width + 4, small.height + 18
    sheet = Image.new("RGB", (columns * cell_w, n_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for k in range(n):
        r, c = divmod(k, columns)
        tile = overlay(small, head_maps[k], small_box, cmap=cmap, opacity=opacity,  # type: ignore[arg-type]
                       smooth=smooth)
        sheet.paste(tile, (c * cell_w + 2, r * cell_h + 16))
        draw.text((c * cell_w + 2, r * cell_h + 2), labels[k] if labels else f"head {k}", fill="black", font=font)
    return sheet


@dataclass(frozen=True)
class SharePlotGeometry:
    """Where the cells of a layer x head plot are, to turn a click into (layer, head)."""

    left: int
    top: int
    cell: int
    n_layers: int
    n_heads: int

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        head, layer = int((x - self.left) // self.cell), int((y - self.top) // self.cell)
        if 0 <= layer < self.n_layers and 0 <= head < self.n_heads and x >= self.left and y >= self.top:
            return layer, head
        return None


def share_plot(share: np.ndarray, *, cmap: str = "viridis", cell: int = 0) -> tuple[Image.Image, SharePlotGeometry]:
    """Image attention share as a layers (rows) x heads (columns) grid of coloured cells."""
    n_layers, n_heads = share.shape
    cell = cell or max(12, min(48, 640 // max(n_layers, n_heads)))
    left, top = 64, 22
    geom = SharePlotGeometry(left, top, cell, n_layers, n_heads)
    font = _font(11)
    note = "columns: heads, rows: layers; colour and number: share of attention on image tokens"
    bar_w = 240
    width = max(left + n_heads * cell + 10, left + bar_w + 10, 12 + int(ImageDraw.Draw(Image.new("RGB", (1, 1)))
                                                                         .textlength(note, font=font)))
    height = top + n_layers * cell + 60
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    colours = colormap(cmap)(np.clip(share, 0, 1))  # (L, H, 4); share is a fraction already
    for layer in range(n_layers):
        draw.text((4, top + layer * cell + cell / 2 - 6), f"layer {layer}", fill="black", font=font)
        for head in range(n_heads):
            rgb = tuple(int(v * 255) for v in colours[layer, head, :3])
            x, y = left + head * cell, top + layer * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=rgb)
            if cell >= 28:  # room for the number
                ink = "black" if sum(rgb) > 380 else "white"
                draw.text((x + 3, y + cell / 2 - 6), f"{share[layer, head]:.2f}", fill=ink, font=font)
    for head in range(n_heads):
        draw.text((left + head * cell + 2, 4), str(head), fill="black", font=font)
    y_bar = top + n_layers * cell + 6
    out.paste(colorbar(cmap, 0.0, 1.0, width=bar_w, height=10, label="share"), (left, y_bar))
    draw.text((4, y_bar + 34), note, fill="black", font=font)
    return out, geom


def save_npz(path: Path | str, arrays: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    np.savez_compressed(path, **arrays)
    return path


def save_json(path: Path | str, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(payload, indent=1))
    return path
