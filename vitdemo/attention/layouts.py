"""Image-token layouts: where each image token of a prompt sits on the original image.

A layout maps every image token in `input_ids` to (image, tile, row, col) and every tile
to its box on the original image, so one attention vector over the image tokens becomes
one heatmap per image, for any architecture we know how to read.

Layouts are derived from the model config and the processor's outputs (`pixel_values`,
`image_grid_thw`, the processor's own sizes), dispatched on `config.model_type` (the
architecture the config declares), never on a model's name. An architecture without a
builder raises `UnsupportedModelError` naming it; chat is not affected.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitdemo.errors import UnsupportedModelError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original-image pixels


@dataclass(frozen=True)
class Tile:
    """One grid of image tokens that covers `box` of image `image`."""

    image: int  # index of the image in the message
    index: int  # index of the tile within its image (a global view comes last)
    rows: int  # token grid rows
    cols: int  # token grid cols
    box: Box  # region of the original image the grid covers
    positions: np.ndarray = field(repr=False)  # (rows * cols,) sequence positions, row-major
    tile_row: int = 0  # where the tile sits in its image's tile mosaic
    tile_col: int = 0
    is_global: bool = False  # a downscaled view of the whole image (Idefics3)


@dataclass(frozen=True)
class ImageGrid:
    """The map grid of one image: a rows x cols heatmap over `box`."""

    image: int
    rows: int
    cols: int
    box: Box
    size: tuple[int, int]  # (width, height) of the original image


@dataclass
class ImageTokenLayout:
    """All image tokens of one prompt (batch size 1) and where they sit."""

    architecture: str  # config.model_type, for messages
    image_sizes: list[tuple[int, int]]  # (width, height) of each original image
    tiles: list[Tile]
    # Image tokens that have no cell (a CLS feature kept by strategy "full").
    unmapped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        all_pos = np.concatenate([t.positions for t in self.tiles] + [self.unmapped])
        if len(np.unique(all_pos)) != len(all_pos):
            raise ValueError(f"layout lists {len(all_pos)} positions but only "
                             f"{len(np.unique(all_pos))} are distinct")
        for t in self.tiles:
            if len(t.positions) != t.rows * t.cols:
                raise ValueError(f"tile {t.index} of image {t.image}: {len(t.positions)} "
                                 f"positions for a {t.rows}x{t.cols} grid")
        # Column order of every captured attention slice: sorted sequence positions.
        self.positions: np.ndarray = np.sort(all_pos)
        self._column = {int(p): i for i, p in enumerate(self.positions)}

    @property
    def n_tokens(self) -> int:
        return len(self.positions)

    @property
    def n_images(self) -> int:
        return len(self.image_sizes)

    def tiles_of(self, image: int) -> list[Tile]:
        return [t for t in self.tiles if t.image == image]

    def grid(self, image: int) -> ImageGrid:
        """The map grid of an image: its local tiles as one mosaic, else its single tile."""
        local = [t for t in self.tiles_of(image) if not t.is_global]
        size = self.image_sizes[image]
        if not local:
            (only,) = self.tiles_of(image)
            return ImageGrid(image, only.rows, only.cols, only.box, size)
        n_tr = 1 + max(t.tile_row for t in local)
        n_tc = 1 + max(t.tile_col for t in local)
        r, c = local[0].rows, local[0].cols
        box = (min(t.box[0] for t in local), min(t.box[1] for t in local),
               max(t.box[2] for t in local), max(t.box[3] for t in local))
        return ImageGrid(image, n_tr * r, n_tc * c, box, size)

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """Indices into `self.positions` (the capture's last axis) of sequence positions."""
        return np.array([self._column[int(p)] for p in positions], dtype=np.int64)

    def image_maps(self, weights: np.ndarray) -> list[np.ndarray]:
        """Split (..., n_tokens) attention over image tokens into one (..., rows, cols) map per
        image. Several tiles become one mosaic; a global view's mass is spread evenly over
        the mosaic cells it covers, so each cell holds the attention that reached its region.
        """
        if weights.shape[-1] != self.n_tokens:
            raise ValueError(f"weights have {weights.shape[-1]} image columns, "
                             f"the layout has {self.n_tokens} image tokens")
        lead = weights.shape[:-1]
        maps = []
        for image in range(self.n_images):
            g = self.grid(image)
            out = np.zeros((*lead, g.rows, g.cols), dtype=np.float32)
            for t in self.tiles_of(image):
                # (..., rows * cols) -> (..., rows, cols)
                tile_map = weights[..., self.columns(t.positions)].reshape(*lead, t.rows, t.cols)
                if not t.is_global or len(self.tiles_of(image)) == 1:
                    r0, c0 = t.tile_row * t.rows, t.tile_col * t.cols
                    out[..., r0:r0 + t.rows, c0:c0 + t.cols] += tile_map
                    continue
                # Global view over the mosaic: nearest source cell, mass shared by its cells.
                ri = np.arange(g.rows) * t.rows // g.rows  # (g.rows,) source row of each row
                ci = np.arange(g.cols) * t.cols // g.cols
                per_r = np.bincount(ri, minlength=t.rows)[ri]
                per_c = np.bincount(ci, minlength=t.cols)[ci]
                spread = tile_map[..., ri, :][..., :, ci] / np.outer(per_r, per_c)
                out += spread.astype(np.float32)
            maps.append(out)
        return maps

    def cell_of(self, position: int) -> tuple[int, int, int, int]:
        """(image, tile, row, col) of an image token's sequence position."""
        for t in self.tiles:
            hit = np.nonzero(t.positions == position)[0]
            if len(hit):
                row, col = divmod(int(hit[0]), t.cols)
                return t.image, t.index, row, col
        raise KeyError(f"position {position} is not a mapped image token")

    def cell_box(self, position: int) -> Box:
        """The box on the original image of the cell an image token stands for."""
        image, tile, row, col = self.cell_of(position)
        t = next(t for t in self.tiles if t.image == image and t.index == tile)
        x0, y0, x1, y1 = t.box
        w, h = (x1 - x0) / t.cols, (y1 - y0) / t.rows
        return (x0 + col * w, y0 + row * h, x0 + (col + 1) * w, y0 + (row + 1) * h)


# ----------------------------------------------------------------------------- helpers


def _ids(inputs: Any) -> np.ndarray:
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"layouts are built for one prompt at a time, got a batch of {ids.shape[0]}")
        ids = ids[0]
    return ids.astype(np.int64)  # (T,)


def _image_token_id(config: Any) -> int:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise UnsupportedModelError(f"{config.model_type}: the config has no image_token_id")


def _split_counts(positions: np.ndarray, counts: Sequence[int], arch: str) -> list[np.ndarray]:
    if sum(counts) != len(positions):
        raise UnsupportedModelError(
            f"{arch}: the processor wrote {len(positions)} image tokens but the layout expects "
            f"{sum(counts)} ({list(counts)} per image); attention maps cannot be placed")
    bounds = np.cumsum([0, *counts])
    return [positions[bounds[i]:bounds[i + 1]] for i in range(len(counts))]


def _image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or an (H, W, C) array."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return int(image.size[0]), int(image.size[1])
    arr = np.asarray(image)
    return int(arr.shape[1]), int(arr.shape[0])


def _size_value(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def clip_style_box(image_processor: Any, width: int, height: int) -> Box:
    """Region of the original image that a resize (+ pad) + centre-crop pipeline keeps.

    CLIP-style processors resize the shortest edge to `size.shortest_edge` and centre-crop
    `crop_size`; LLaVA's own image processor may first pad to a square. A processor that
    resizes to a fixed height x width keeps (stretches) the whole image.
    """
    x0, y0, w, h = 0.0, 0.0, float(width), float(height)
    if getattr(image_processor, "do_pad", False) and w != h:
        side = max(w, h)  # padded to a square around the image
        x0, y0, w, h = (w - side) / 2, (h - side) / 2, side, side
    size = getattr(image_processor, "size", None)
    shortest = _size_value(size, "shortest_edge")
    if not getattr(image_processor, "do_center_crop", False) or not shortest:
        return (x0, y0, x0 + w, y0 + h)
    scale = shortest / min(w, h)
    crop = getattr(image_processor, "crop_size", None)
    crop_h = _size_value(crop, "height") or shortest
    crop_w = _size_value(crop, "width") or shortest
    keep_w, keep_h = min(crop_w / scale, w), min(crop_h / scale, h)
    cx, cy = x0 + w / 2, y0 + h / 2
    return (cx - keep_w / 2, cy - keep_h / 2, cx + keep_w / 2, cy + keep_h / 2)


def _grid_positions(positions: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if len(positions) != rows * cols:
        raise ValueError(f"{len(positions)} positions for a {rows}x{cols} grid")
    return positions


# ----------------------------------------------------------------------------- builders


def llava_layout(config: Any, processor: Any, inputs: Any, images: Sequence[Any]) -> ImageTokenLayout:
    """LLaVA-1.5 and the classroom model: one square grid per image, CLS dropped by
    strategy "default" or kept (as an unmapped token) by strategy "full"."""
    arch = config.model_type
    positions = np.nonzero(_ids(inputs) == _image_token_id(config))[0]
    pixel_values = inputs["pixel_values"]
    n_images, height, width = int(pixel_values.shape[0]), int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    if n_images != len(images):
        raise ValueError(f"{n_images} pixel_values for {len(images)} images")
    patch = int(config.vision_config.patch_size)
    rows, cols = height // patch, width // patch
    per_image = len(positions) // max(n_images, 1)
    extra = per_image - rows * cols  # CLS kept ("full") or none
    if extra not in (0, 1) or per_image * n_images != len(positions):
        raise UnsupportedModelError(
            f"{arch}: {len(positions)} image tokens for {n_images} image(s) of a {rows}x{cols} "
            f"patch grid (strategy {getattr(config, 'vision_feature_select_strategy', None)!r}); "
            "this variant's layout is not supported")
    tiles, unmapped = [], []
    for i, pos in enumerate(_split_counts(positions, [per_image] * n_images, arch)):
        unmapped.append(pos[:extra])  # the CLS feature comes first
        w, h = _image_size(images[i])
        box = clip_style_box(processor.image_processor, w, h)
        tiles.append(Tile(i, 0, rows, cols, box, _grid_positions(pos[extra:], rows, cols)))
    return ImageTokenLayout(arch, [_image_size(im) for im in images], tiles,
                            np.concatenate(unmapped) if unmapped else np.zeros(0, np.int64))


def idefics3_layout(config: Any, processor: Any, inputs: Any, images: Sequence[Any]) -> ImageTokenLayout:
    """Idefics3 / SmolVLM: each image is split into rows x cols tiles plus a global view;
    each tile's patch grid is pixel-shuffled by `scale_factor` into an s x s token grid."""
    arch = config.model_type
    positions = np.nonzero(_ids(inputs) == _image_token_id(config))[0]
    seq_len = int(processor.image_seq_len)
    side = math.isqrt(seq_len)
    expected = (config.vision_config.image_size // config.vision_config.patch_size) // config.scale_factor
    if side * side != seq_len or side != expected:
        raise UnsupportedModelError(
            f"{arch}: image_seq_len {seq_len} is not the {expected}x{expected} pixel-shuffled grid")
    image_processor = processor.image_processor
    # The tile rows/cols the processor chose (it drops them from its own output).
    info = image_processor(images=[list(images)], return_row_col_info=True)
    splits = list(zip((int(r) for r in info["rows"][0]), (int(c) for c in info["cols"][0])))
    counts = [(r * c + 1) * seq_len for r, c in splits]
    tiles = []
    for i, pos in enumerate(_split_counts(positions, counts, arch)):
        w, h = _image_size(images[i])
        n_rows, n_cols = splits[i]
        chunks = pos.reshape(-1, seq_len)  # (n_tiles, seq_len): tiles in reading order, global last
        for k in range(n_rows * n_cols):
            tr, tc = divmod(k, n_cols)
            box = (tc * w / n_cols, tr * h / n_rows, (tc + 1) * w / n_cols, (tr + 1) * h / n_rows)
            tiles.append(Tile(i, k, side, side, box, chunks[k], tr, tc))
        tiles.append(Tile(i, n_rows * n_cols, side, side, (0.0, 0.0, float(w), float(h)), chunks[-1],
                          is_global=True))
    return ImageTokenLayout(arch, [_image_size(im) for im in images], tiles)


def qwen2vl_layout(config: Any, processor: Any, inputs: Any, images: Sequence[Any]) -> ImageTokenLayout:
    """Qwen2-VL: a dynamic t x h x w patch grid per image (image_grid_thw), merged 2x2
    (spatial_merge_size) into (h / m) x (w / m) tokens in reading order; the whole
    image is resized, never cropped."""
    arch = config.model_type
    positions = np.nonzero(_ids(inputs) == _image_token_id(config))[0]
    thw = np.asarray(inputs["image_grid_thw"]).reshape(-1, 3)  # (n_images, 3)
    merge = int(getattr(config.vision_config, "spatial_merge_size", 2))
    if len(thw) != len(images):
        raise ValueError(f"image_grid_thw has {len(thw)} rows for {len(images)} images")
    counts = [int(t * h * w) // (merge * merge) for t, h, w in thw]
    tiles = []
    for i, pos in enumerate(_split_counts(positions, counts, arch)):
        t, h, w = (int(v) for v in thw[i])
        if t != 1:
            raise UnsupportedModelError(f"{arch}: image {i} has {t} temporal patches (video)")
        wi, hi = _image_size(images[i])
        tiles.append(Tile(i, 0, h // merge, w // merge, (0.0, 0.0, float(wi), float(hi)), pos))
    return ImageTokenLayout(arch, [_image_size(im) for im in images], tiles)


LayoutBuilder = Callable[[Any, Any, Any, Sequence[Any]], ImageTokenLayout]

# Keyed by config.model_type, the architecture a config declares.
LAYOUT_BUILDERS: dict[str, LayoutBuilder] = {
    "llava": llava_layout,
    "idefics3": idefics3_layout,
    "smolvlm": idefics3_layout,
    "qwen2_vl": qwen2vl_layout,
    "qwen2_5_vl": qwen2vl_layout,
}


def check_supported(config: Any) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUT_BUILDERS:
        raise UnsupportedModelError(
            f"attention maps do not support the architecture {model_type!r} "
            f"({type(config).__name__}); supported: {', '.join(sorted(LAYOUT_BUILDERS))}. "
            "Chat still works.")


def build_layout(config: Any, processor: Any, inputs: Any, images: Sequence[Any]) -> ImageTokenLayout:
    """The image-token layout of one processed prompt (batch size 1)."""
    check_supported(config)
    layout = LAYOUT_BUILDERS[config.model_type](config, processor, inputs, images)
    n_in_ids = int((_ids(inputs) == _image_token_id(config)).sum())
    if layout.n_tokens != n_in_ids:
        raise UnsupportedModelError(f"{config.model_type}: layout places {layout.n_tokens} image "
                                    f"tokens, input_ids hold {n_in_ids}")
    log.debug("layout %s: %d images, %d tiles, %d image tokens", layout.architecture,
              layout.n_images, len(layout.tiles), layout.n_tokens)
    return layout
