"""Image-token layouts: hand-made layouts, then the three tiny architectures."""

from __future__ import annotations

from pathlib import Path

from vitdemo.paths import REPO_ROOT
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vitdemo.errors import UnsupportedModelError
from vitdemo.attention.layouts import ImageTokenLayout, Tile, build_layout, clip_style_box


def _mosaic_layout() -> ImageTokenLayout:
    """One 80x40 image as 1x2 local tiles of 2x2 tokens + a 2x2 global view, tokens from 10."""
    pos = np.arange(10, 22)
    tiles = [
        Tile(0, 0, 2, 2, (0, 0, 40, 40), pos[0:4], 0, 0),
        Tile(0, 1, 2, 2, (40, 0, 80, 40), pos[4:8], 0, 1),
        Tile(0, 2, 2, 2, (0, 0, 80, 40), pos[8:12], is_global=True),
    ]
    return ImageTokenLayout("hand", [(80, 40)], tiles)


def test_hand_made_mosaic_places_each_token_in_its_cell():
    layout = _mosaic_layout()
    assert layout.grid(0).rows == 2 and layout.grid(0).cols == 4
    for k, pos in enumerate(layout.positions[:8]):
        weights = np.zeros(layout.n_tokens, np.float32)
        weights[k] = 1.0
        (grid_map,) = layout.image_maps(weights)
        image, tile, row, col = layout.cell_of(int(pos))
        expected = (row, tile * 2 + col)
        assert np.unravel_index(np.argmax(grid_map), grid_map.shape) == expected
        assert grid_map.sum() == pytest.approx(1.0)
        x0, y0, x1, y1 = layout.cell_box(int(pos))
        assert (x1 - x0, y1 - y0) == (20, 20)
        assert (x0, y0) == (expected[1] * 20, expected[0] * 20)


def test_global_view_mass_is_spread_over_the_cells_it_covers():
    layout = _mosaic_layout()
    weights = np.zeros(layout.n_tokens, np.float32)
    weights[9] = 1.0  # global token (row 0, col 1): the top right half of the image
    (grid_map,) = layout.image_maps(weights)
    assert grid_map.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(grid_map[0], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(grid_map[1], [0, 0, 0, 0])


def test_batched_leading_axes_survive():
    layout = _mosaic_layout()
    weights = np.random.default_rng(0).random((3, 5, layout.n_tokens)).astype(np.float32)
    (grid_map,) = layout.image_maps(weights)
    assert grid_map.shape == (3, 5, 2, 4)
    np.testing.assert_allclose(grid_map.sum((-1, -2)), weights.sum(-1), rtol=1e-5)


def test_layout_rejects_duplicate_positions():
    pos = np.arange(4)
    with pytest.raises(ValueError, match="distinct"):
        ImageTokenLayout("hand", [(8, 8)], [Tile(0, 0, 2, 2, (0, 0, 8, 8), pos), Tile(0, 1, 2, 2, (0, 0, 8, 8), pos)])


def test_centre_crop_box_is_the_kept_square():
    proc = SimpleNamespace(do_center_crop=True, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert clip_style_box(proc, 60, 40) == (10.0, 0.0, 50.0, 40.0)
    squash = SimpleNamespace(do_center_crop=False, size={"height": 64, "width": 64})
    assert clip_style_box(squash, 60, 40) == (0.0, 0.0, 60.0, 40.0)
    pad = SimpleNamespace(do_pad=True, do_center_crop=False, size={"height": 64, "width": 64})
    assert clip_style_box(pad, 60, 40) == (0.0, -10.0, 60.0, 50.0)


def test_unknown_architecture_is_named():
    config = SimpleNamespace(model_type="blip-2")
    with pytest.raises(UnsupportedModelError, match="blip-2"):
        build_layout(config, None, {"input_ids": np.zeros((1, 3))}, [])


# ----------------------------------------------------------------------------- tiny models

ARCHS = ["tiny_llava_dir", "tiny_idefics3_dir", "tiny_qwen2vl_dir"]


def _inputs(folder, images, question="what is here?"):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor, processor(images=images, text=prompt, return_tensors="pt")


def _config(folder):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


@pytest.mark.parametrize("fixture", ARCHS)
@pytest.mark.parametrize("sizes", [[(60, 40)], [(60, 40), (30, 50)], [(20, 20), (64, 64), (50, 30)]])
def test_token_count_matches_input_ids(fixture, sizes, request):
    folder = request.getfixturevalue(fixture)
    images = [Image.new("RGB", s, "white") for s in sizes]
    processor, inputs = _inputs(folder, images)
    config = _config(folder)
    layout = build_layout(config, processor, inputs, images)
    ids = inputs["input_ids"][0].numpy()
    image_positions = np.nonzero(ids == config.image_token_id)[0]
    assert layout.n_tokens == len(image_positions) > 0
    np.testing.assert_array_equal(layout.positions, image_positions)
    assert layout.n_images == len(images)
    for i, size in enumerate(sizes):
        grid = layout.grid(i)
        assert grid.size == size
        # the map grid covers a region of the image that overlaps it
        assert grid.box[0] < size[0] and grid.box[1] < size[1] and grid.box[2] > 0 and grid.box[3] > 0
        # every image's own tokens come before the next image's
        if i:
            assert layout.tiles_of(i)[0].positions.min() > layout.tiles_of(i - 1)[-1].positions.max()


def test_idefics3_splits_wide_image_into_tiles_plus_global(tiny_idefics3_dir):
    images = [Image.new("RGB", (64, 30), "white")]
    processor, inputs = _inputs(tiny_idefics3_dir, images)
    layout = build_layout(_config(tiny_idefics3_dir), processor, inputs, images)
    local = [t for t in layout.tiles if not t.is_global]
    assert len(local) >= 2 and sum(t.is_global for t in layout.tiles) == 1
    assert {t.rows for t in layout.tiles} == {2}  # 32 px tile / 8 px patch / pixel shuffle 2
    assert layout.grid(0).cols == 2 * (1 + max(t.tile_col for t in local))


def test_qwen2vl_grid_follows_image_grid_thw(tiny_qwen2vl_dir):
    images = [Image.new("RGB", (64, 32), "white")]
    processor, inputs = _inputs(tiny_qwen2vl_dir, images)
    layout = build_layout(_config(tiny_qwen2vl_dir), processor, inputs, images)
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert (layout.grid(0).rows, layout.grid(0).cols) == (h // 2, w // 2)


CLASSROOM = REPO_ROOT / "assets" / "classroom"


@pytest.mark.parametrize("sizes", [[(192, 192)], [(96, 96), (300, 200)]])
def test_classroom_layout_token_count(sizes):
    images = [Image.new("RGB", s, "white") for s in sizes]
    processor, inputs = _inputs(CLASSROOM, images)
    config = _config(CLASSROOM)
    layout = build_layout(config, processor, inputs, images)
    ids = inputs["input_ids"][0].numpy()
    assert layout.n_tokens == int((ids == config.image_token_id).sum()) == 64 * len(images)
    for i, size in enumerate(sizes):
        grid = layout.grid(i)
        assert (grid.rows, grid.cols) == (8, 8)
        assert grid.box == (0.0, 0.0, float(size[0]), float(size[1]))  # squashed, never cropped
