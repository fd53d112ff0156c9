"""Capture, maps, rollout, heatmaps and the engine-level API on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitdemo.attention import heatmaps
from vitdemo.attention.maps import MapSpec, rollout
from vitdemo.attention.capture import (
    CaptureSettings,
    capture,
    decoder_attention_modules,
    estimate_capture_bytes,
)
from vitdemo.core.batch_inputs import to_model
from vitdemo.errors import GenerationError, UnsupportedModelError
from vitdemo.attention.pointing import is_hit, peak_point

ARCHS = ["tiny_llava_dir", "tiny_idefics3_dir", "tiny_qwen2vl_dir"]
# Module whose eager_attention_forward the text decoder of each tiny model calls.
EAGER_MODULES = {
    "tiny_llava_dir": "transformers.models.llama.modeling_llama",
    "tiny_idefics3_dir": "transformers.models.llama.modeling_llama",
    "tiny_qwen2vl_dir": "transformers.models.qwen2_vl.modeling_qwen2_vl",
}
GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}


def _load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _prompt(processor, images, question="what is here?"):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(images=images, text=prompt, return_tensors="pt")


def _images():
    return [Image.new("RGB", (60, 40), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]


@pytest.mark.parametrize("fixture", ARCHS)
def test_forced_attention_peaks_at_the_token_cell_and_box(fixture, request, monkeypatch):
    """Every decoder head is made to attend only to one known image token of the second
    image: its map must peak in that token's cell, and the overlay in that cell's box."""
    import importlib

    from vitdemo.attention.layouts import build_layout

    model, processor = _load(request.getfixturevalue(fixture))
    images = _images()
    inputs = _prompt(processor, images)
    layout = build_layout(model.config, processor, inputs, images)
    local = [t for t in layout.tiles_of(1) if not t.is_global]
    tile = local[min(1, len(local) - 1)]
    cell = min(tile.rows * tile.cols - 1, tile.cols + 1)  # row 1, col 1 when the tile has it
    target = int(tile.positions[cell])

    module = importlib.import_module(EAGER_MODULES[fixture])
    original = module.eager_attention_forward

    def forced(attn_module, query, key, value, attention_mask, **kwargs):
        out, weights = original(attn_module, query, key, value, attention_mask, **kwargs)
        if weights is not None and weights.shape[-1] > target:
            weights = torch.zeros_like(weights)
            weights[..., target] = 1.0
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", forced)
    result = capture(model, processor, inputs, images, GREEDY, CaptureSettings(vision=False))
    assert len(result.answer_tokens) >= 1
    _, _, row, col = layout.cell_of(target)
    grid = result.grids()[1]
    expected = (tile.tile_row * tile.rows + row, tile.tile_col * tile.cols + col)
    for k in range(len(result.answer_tokens)):
        maps = result.token_maps("answer", k)
        assert maps[0].sum() == pytest.approx(0.0)  # nothing on the first image
        assert maps[1].sum() == pytest.approx(1.0)
        assert np.unravel_index(np.argmax(maps[1]), maps[1].shape) == expected
        assert is_hit(maps[1], grid, layout.cell_box(target))
        # the drawn overlay's hottest pixels are inside the cell's box
        pixels = heatmaps.map_on_image(maps[1], grid.box, images[1].size)
        ys, xs = np.nonzero(pixels == np.nanmax(pixels))
        x0, y0, x1, y1 = layout.cell_box(target)
        assert xs.min() >= np.floor(x0) and xs.max() <= np.ceil(x1) and ys.min() >= np.floor(y0)
        assert ys.max() <= np.ceil(y1)
    assert result.image_share().min() == pytest.approx(1.0)  # all attention went to the image


@pytest.mark.parametrize("fixture", ARCHS)
def test_capture_keeps_only_text_to_image_slices_and_restores_sdpa(fixture, request):
    model, processor = _load(request.getfixturevalue(fixture))
    before = model.config._attn_implementation
    images = _images()
    inputs = _prompt(processor, images)
    result = capture(model, processor, inputs, images, GREEDY)
    n_layers = len(decoder_attention_modules(model))
    n_heads = model.config.get_text_config().num_attention_heads
    n_img = result.layout.n_tokens
    n_text = inputs["input_ids"].shape[-1] - n_img
    assert result.answer_attn.shape == (len(result.answer_tokens), n_layers, n_heads, n_img)
    assert result.prompt_attn.shape == (n_text, n_layers, n_heads, n_img)
    # real attention weights: non-negative, at most 1 in total per row, not all zero
    assert result.answer_attn.min() >= 0 and result.answer_attn.sum(-1).max() <= 1 + 1e-4
    assert result.answer_attn.sum() > 0 and result.prompt_attn[-1].sum() > 0
    # the last prompt row is the query that predicted the first answer token
    np.testing.assert_allclose(result.prompt_attn[-1], result.answer_attn[0], atol=1e-6)
    assert model.config._attn_implementation == before
    # the same greedy answer as plain generation
    with torch.inference_mode():
        plain = model.generate(**inputs, **GREEDY)
    tokenizer = processor.tokenizer
    plain_ids = [t for t in plain[0, inputs["input_ids"].shape[-1]:].tolist() if t not in tokenizer.all_special_ids]
    assert result.answer_ids == plain_ids


def test_model_that_returns_no_weights_is_an_error(tiny_llava_dir, monkeypatch):
    import transformers.models.llama.modeling_llama as llama

    original = llama.eager_attention_forward
    monkeypatch.setattr(llama, "eager_attention_forward",
                        lambda *a, **k: (original(*a, **k)[0], None))
    model, processor = _load(tiny_llava_dir)
    images = _images()[:1]
    with pytest.raises(UnsupportedModelError, match="no attention weights"):
        capture(model, processor, _prompt(processor, images), images, GREEDY)


def test_no_weights_in_the_app_answers_without_maps(llava_engine, monkeypatch):
    import transformers.models.llama.modeling_llama as llama

    original = llama.eager_attention_forward
    monkeypatch.setattr(llama, "eager_attention_forward",
                        lambda *a, **k: (original(*a, **k)[0], None))
    events = _ask(llava_engine)
    assert events and all(e.result is None for e in events)
    assert "no attention weights" in events[0].notice and events[-1].text


def test_vision_attention_and_rollout(tiny_llava_dir):
    model, processor = _load(tiny_llava_dir)
    images = _images()
    result = capture(model, processor, _prompt(processor, images), images, GREEDY)
    vision = result.vision
    assert vision is not None and vision.n_prefix == 1  # CLIP keeps a CLS token
    n_layers = model.config.vision_config.num_hidden_layers
    assert vision.cls_rows.shape[:2] == (2, n_layers)
    np.testing.assert_allclose(vision.mean_rows.sum(-1), 1.0, atol=1e-4)  # rows of a softmax
    for image in range(2):
        assert result.vision_maps(image, 0, 1, "cls").shape == vision.grid
        roll = result.rollout_map(image)
        assert roll.shape == vision.grid and roll.min() >= 0


def test_rollout_matches_the_definition():
    rng = np.random.default_rng(0)
    layers = [rng.dirichlet(np.ones(5), size=5) for _ in range(3)]  # row-stochastic (5, 5)
    expected = np.eye(5)
    for a in layers:
        step = 0.5 * np.eye(5) + 0.5 * a
        expected = (step / step.sum(-1, keepdims=True)) @ expected
    np.testing.assert_allclose(rollout(layers), expected)
    np.testing.assert_allclose(rollout(layers).sum(-1), 1.0)
    # identity attention: rollout is the identity
    np.testing.assert_allclose(rollout([np.eye(4)] * 3), np.eye(4))


def test_map_spec_selects_layers_and_heads(tiny_llava_dir):
    model, processor = _load(tiny_llava_dir)
    images = _images()[:1]
    result = capture(model, processor, _prompt(processor, images), images, GREEDY)
    raw = result.answer_attn[0]  # (L, H, n_img)
    one = result.token_vector("answer", 0, MapSpec(layers=(1,), heads=(2,), renormalise=False))
    np.testing.assert_allclose(one, raw[1, 2])
    mean = result.token_vector("answer", 0, MapSpec(renormalise=True))
    np.testing.assert_allclose(mean, raw.mean((0, 1)) / raw.mean((0, 1)).sum(), rtol=1e-5)
    heads = result.head_maps("answer", 0, (0,))
    grid = result.grids()[0]
    assert heads.shape == (raw.shape[1], grid.rows, grid.cols)
    np.testing.assert_allclose(heads.sum((-1, -2)), 1.0, rtol=1e-5)
    share = result.image_share()
    np.testing.assert_allclose(share, result.answer_attn.sum(-1).mean(0))


def test_memory_estimate_formula():
    est = estimate_capture_bytes(n_layers=32, n_heads=32, n_image_tokens=576, n_prompt_text=0,
                                 max_new_tokens=64, seq_len=600, compute_bytes=2, store_bytes=4)
    assert est.stored == 32 * 32 * 576 * 64 * 4
    assert est.transient == 32 * 600 * 600 * 6


# ----------------------------------------------------------------------------- engine level


@pytest.fixture()
def llava_engine(tiny_llava_dir):
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    return Engine(load_model(str(tiny_llava_dir), device="cpu"))


def _ask(engine, settings=CaptureSettings()):
    from vitdemo.attention.attend import stream_with_maps
    from vitdemo.chat.conversation import GenerationSettings

    images = _images()[:1]
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    return list(stream_with_maps(engine, conversation, images, GenerationSettings(max_new_tokens=4), settings))


def test_streaming_gives_each_token_its_map_as_it_arrives(llava_engine):
    from vitdemo.attention.attend import stream_with_maps
    from vitdemo.chat.conversation import GenerationSettings

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    seen = []
    for event in stream_with_maps(llava_engine, conversation, _images()[:1], GenerationSettings(max_new_tokens=4)):
        assert event.notice is None and event.result is not None
        # the map of the token just streamed exists when the token arrives (the result grows in place)
        seen.append((event.index, len(event.result.answer_attn), event.result.token_maps("answer", event.index)[0].sum()))
        assert event.text == event.result.answer
    assert [(i, n) for i, n, _ in seen] == [(k, k + 1) for k in range(len(seen))] and seen
    assert all(total == pytest.approx(1.0) for _, _, total in seen)


def test_too_large_capture_answers_without_maps(llava_engine):
    events = _ask(llava_engine, CaptureSettings(max_capture_bytes=1000))
    assert events and all(e.result is None for e in events)
    assert "MiB" in events[0].notice and "without maps" in events[0].notice
    assert events[-1].text  # the answer still came


def test_unsupported_architecture_still_answers(llava_engine, monkeypatch):
    from vitdemo.attention import layouts

    monkeypatch.delitem(layouts.LAYOUT_BUILDERS, "llava")
    events = _ask(llava_engine)
    assert events and events[0].notice and "'llava'" in events[0].notice
    assert events[-1].text


def test_export_and_pictures(llava_engine, tmp_path):
    from vitdemo.attention.attend import View, attend, export, render_heads, render_token, render_vision

    images = _images()[:1]
    answer, result, notice = attend(llava_engine, images, "what colour?")
    assert notice is None and result is not None and result.answer_tokens
    files = export(result, images, tmp_path, View(cmap="viridis", opacity=0.7))
    assert len([f for f in files if f.suffix == ".png"]) == len(result.answer_tokens)
    saved = np.load(tmp_path / "maps.npz")
    np.testing.assert_array_equal(saved["answer_attn"], result.answer_attn)
    first = render_token(result, images, "answer", 0, view=View(opacity=0.0, colorbar=False))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(images[0]))  # opacity 0: the image itself
    full = render_token(result, images, "answer", 0, view=View(opacity=1.0))
    assert full.height > images[0].height  # the colour bar is under it
    heads = render_heads(result, images, "prompt", -1, layer=0)
    assert heads.width > images[0].width
    vis = render_vision(result, images, 0, "rollout", None, None, "cls")
    assert vis.size[0] >= images[0].size[0]


def test_share_plot_click_maps_to_layer_and_head():
    share = np.random.default_rng(0).random((3, 4))
    picture, geom = heatmaps.share_plot(share)
    assert picture.width >= geom.left + 4 * geom.cell
    x = geom.left + 2 * geom.cell + geom.cell // 2
    y = geom.top + 1 * geom.cell + 1
    assert geom.cell_at(x, y) == (1, 2)
    assert geom.cell_at(1, 1) is None


def test_peak_point_is_centre_of_the_hottest_cell():
    from vitdemo.attention.layouts import ImageGrid

    grid = ImageGrid(0, 2, 4, (0, 0, 80, 40), (80, 40))
    grid_map = np.zeros((2, 4))
    grid_map[1, 2] = 1
    assert peak_point(grid_map, grid) == (50.0, 30.0)


def test_to_model_keeps_integer_ids(tiny_llava_dir):
    model, processor = _load(tiny_llava_dir)
    moved = to_model(_prompt(processor, _images()[:1]), model)
    assert moved["input_ids"].dtype == torch.long and moved["pixel_values"].dtype == torch.float32


def test_download_folders_expire(llava_engine, tmp_path):
    """'Prepare files' writes a fresh folder each time; folders past their time to live go."""
    import os
    import time

    from vitdemo.attention import view as av
    from vitdemo.attention.attend import View, attend

    images = _images()[:1]
    _, result, _ = attend(llava_engine, images, "what colour?")
    session = av.AttentionSession(images=images, result=result)
    first = av.downloads(session, View(), root=tmp_path)
    old_folder = os.path.dirname(first[0])
    assert all(os.path.isfile(f) for f in first)
    past = time.time() - av.DOWNLOAD_TTL_S - 60
    os.utime(old_folder, (past, past))
    second = av.downloads(session, View(), root=tmp_path)
    assert not os.path.exists(old_folder)  # expired
    assert all(os.path.isfile(f) for f in second)
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(os.path.dirname(second[0]))]
