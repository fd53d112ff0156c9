"""Relevancy maps (gradient-weighted attention, Chefer et al. 2021) on tiny LLaVA and
Idefics3 and on the classroom model: the maps' grids, the rule itself against a full-matrix
reference built from the model's own returned attentions, tokens that cannot matter, the
model left as it was, bad input, and the pointing game's relevancy variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdemo.attention.capture import CaptureMemoryError, decoder_attention_modules, eager_attention
from vitdemo.attention.layouts import build_layout
from vitdemo.attention.maps import MapSpec
from vitdemo.attention.pointing import (
    PointingItem,
    first_token_relevancy,
    first_token_result,
    is_hit,
    pointing_game,
    question_inputs,
)
from vitdemo.attention.relevancy import RelevancySettings, explain_token, relevancy_maps
from vitdemo.errors import InputError
from vitdemo.paths import REPO_ROOT

CLASSROOM = REPO_ROOT / "assets" / "classroom"
QUESTION = "Where is it?"
ANSWER = [5, 7]  # answer token ids to explain (any ids of the tiny vocabularies)


def _load(folder: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module", params=["llava", "idefics3"])
def tiny(request: pytest.FixtureRequest):
    """(model, processor, image, inputs, layout) of one tiny model; the image is wide enough
    for Idefics3 to split it into several tiles plus its global view."""
    torch.set_num_threads(1)
    model, processor = _load(request.getfixturevalue(f"tiny_{request.param}_dir"))
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 64, 3), dtype=np.uint8))
    inputs = question_inputs(model, processor, image, QUESTION)
    return model, processor, image, inputs, build_layout(model.config, processor, inputs, [image])


def _reference_row(model, inputs, token_id: int) -> torch.Tensor:
    """R = prod (I + mean_h (dA * A)+) as full T x T matrices, from the attentions the model
    returns with output_attentions and their retained gradients after logit.backward()."""
    with eager_attention(model):
        out = model(**inputs, output_attentions=True)
        for attn in out.attentions:
            attn.retain_grad()
        out.logits[0, -1, token_id].backward()
        size = out.attentions[0].shape[-1]
        full = torch.eye(size)
        for attn in out.attentions:  # forward order
            full = full + (attn.grad[0] * attn[0]).clamp(min=0).mean(0).detach() @ full
    model.zero_grad(set_to_none=True)
    return full[-1]


def test_maps_are_on_the_attention_grids_non_negative_and_finite(tiny):
    model, processor, image, inputs, layout = tiny
    capture = first_token_result(model, processor, image, QUESTION)
    result = explain_token(model, processor, inputs, capture.answer_ids, layout, 0)
    assert [m.shape for m in result.maps] == [(g.rows, g.cols) for g in capture.grids()]
    assert result.position == inputs["input_ids"].shape[-1] - 1
    for grid_map in result.maps:
        assert np.all(np.isfinite(grid_map)) and grid_map.min() >= 0 and grid_map.max() > 0
    # The pointing game's helper explains the same (greedy, generated) token as the capture.
    pointing_map, grid = first_token_relevancy(model, processor, image, QUESTION)
    assert grid == capture.grids()[0]
    np.testing.assert_allclose(pointing_map, result.maps[0], rtol=1e-6)


def test_the_row_equals_the_full_matrix_rule(tiny):
    model, processor, _, inputs, layout = tiny
    result = explain_token(model, processor, inputs, ANSWER, layout, 0)
    reference = _reference_row(model, inputs, ANSWER[0])[layout.positions].numpy()
    np.testing.assert_allclose(result.vector, reference, rtol=1e-4, atol=1e-9)


def test_image_tokens_nothing_attends_to_have_no_relevancy(tiny):
    model, processor, _, inputs, layout = tiny
    hidden = layout.positions[[0, 2, len(layout.positions) // 2]]
    masked = dict(inputs, attention_mask=inputs["attention_mask"].clone())
    masked["attention_mask"][0, hidden] = 0  # no query reads these tokens
    vector = explain_token(model, processor, masked, ANSWER, layout, 0).vector
    columns = layout.columns(hidden)
    assert np.all(vector[columns] == 0), vector[columns]
    assert np.all(np.delete(vector, columns) > 0)


def test_the_map_depends_on_the_explained_token(tiny):
    model, processor, _, inputs, layout = tiny
    first = explain_token(model, processor, inputs, [5], layout, 0)
    other = explain_token(model, processor, inputs, [7], layout, 0)
    assert (first.token_id, other.token_id) == (5, 7)
    assert not np.allclose(first.vector, other.vector, rtol=1e-3, atol=0)
    later = explain_token(model, processor, inputs, [5, 7], layout, 1)  # answer token 1: predicted after token 5
    assert later.position == inputs["input_ids"].shape[-1]
    reference = _reference_row(model, dict(inputs, input_ids=torch.cat([inputs["input_ids"], torch.tensor([[5]])], 1),
                                           attention_mask=torch.ones(1, later.position + 1, dtype=torch.long)), 7)
    np.testing.assert_allclose(later.vector, reference[layout.positions].numpy(), rtol=1e-4, atol=1e-9)


def test_the_model_is_left_as_it_was(tiny):
    model, processor, _, inputs, layout = tiny
    implementation = model.config._attn_implementation
    flags = [p.requires_grad for p in model.parameters()]
    hooked = [*decoder_attention_modules(model), model.get_input_embeddings()]

    def hooks() -> list[list[int]]:
        # transformers keeps its own output-recording hooks once output_attentions was
        # asked for (the reference above does): compare with what was there before
        return [list(m._forward_hooks) for m in hooked]

    before = hooks()
    plain = relevancy_maps(model, processor, inputs, ANSWER, layout)
    assert not model.training and model.config._attn_implementation == implementation
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert hooks() == before
    with torch.inference_mode():  # callers such as the UI may be in inference mode
        again = relevancy_maps(model, processor, inputs, ANSWER, layout)
    try:  # a caller in the middle of training gets its train mode back
        model.train()
        relevancy_maps(model, processor, inputs, ANSWER, layout)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    try:  # a frozen model (an adapter's base) builds its graph from the embeddings
        model.requires_grad_(False)
        frozen = relevancy_maps(model, processor, inputs, ANSWER, layout)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    for a, b, c in zip(plain, again, frozen):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6)


def test_bad_input_is_an_input_error(tiny):
    model, processor, _, inputs, layout = tiny
    with pytest.raises(InputError, match="has 1 token"):
        explain_token(model, processor, inputs, [5], layout, 1)
    with pytest.raises(InputError, match="outside the vocabulary"):
        explain_token(model, processor, inputs, [10**6], layout, 0)
    doubled = dict(inputs, input_ids=inputs["input_ids"].repeat(2, 1))
    with pytest.raises(InputError, match=r"shape \(1, T\)"):
        explain_token(model, processor, doubled, ANSWER, layout, 0)
    last_image = int(layout.positions.max())
    cut = dict(inputs, input_ids=inputs["input_ids"][:, :last_image])  # ends before the last image token
    with pytest.raises(InputError, match="different prompts"):
        explain_token(model, processor, cut, ANSWER, layout, 0)
    with pytest.raises(CaptureMemoryError, match="MiB"):
        explain_token(model, processor, inputs, ANSWER, layout, 0, RelevancySettings(max_bytes=1))


def test_pointing_game_scores_the_relevancy_map(tiny_llava_dir: Path):
    model, processor = _load(tiny_llava_dir)
    image = Image.new("RGB", (48, 32), "red")
    everywhere = np.ones((32, 48), bool)
    items = [PointingItem(image, QUESTION, (0, 0, 48, 32), group="box"),
             PointingItem(image, QUESTION, everywhere, group="mask"),
             PointingItem(image, QUESTION, ~everywhere, group="mask")]
    report = pointing_game(model, processor, items, map_kind="relevancy")
    assert (report["n"], report["hits"]) == (3, 2), report
    assert "relevancy" in report["map"] and report["per_group"] == {"box": 1.0, "mask": 0.5}
    with pytest.raises(InputError, match="map_kind"):
        pointing_game(model, processor, items, map_kind="saliency")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="extra map spec"):
        pointing_game(model, processor, items, maps=[MapSpec()], map_kind="relevancy")


def test_classroom_relevancy_points_at_the_one_object():
    """One-object scenes, "What color is the {shape}?": the relevancy peak lands in the
    object's cell far above chance (an 8x8 peak cell in one of 9 scene cells: about 11%)."""
    from vitdemo.classroom import scenes
    from vitdemo.classroom.evaluate import cell_box
    from vitdemo.classroom.report import load_classroom

    torch.set_num_threads(1)
    model, processor = load_classroom(CLASSROOM)
    hits = []
    for seed in range(20):
        scene = scenes.generate_scene(np.random.default_rng(seed), size=96, n_objects=1)
        thing = scene.objects[0]
        inputs = question_inputs(model, processor, scene.image, f"What color is the {thing.shape}?")
        layout = build_layout(model.config, processor, inputs, [scene.image])
        color = processor.tokenizer.encode(thing.color, add_special_tokens=False)
        assert len(color) == 1, color
        result = explain_token(model, processor, inputs, color, layout, 0)  # why this colour word
        hits.append(is_hit(result.maps[0], layout.grid(0), cell_box(thing.cell, scene.image.size)))
    # Measured 9/20 (seeds 0-19); chance would give 7 or more hits in 3 of 1000 runs.
    assert sum(hits) >= 7, hits
