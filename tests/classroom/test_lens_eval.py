"""The classroom logit-lens measurement (vitdemo.classroom.lens_eval): matching rule, which
cells are object patches, and a short run on the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitdemo.classroom import scenes
from vitdemo.classroom.lens_eval import LensEvalSettings, cell_coverage, evaluate_lens, object_cells, word_match
from vitdemo.errors import InputError
from vitdemo.paths import CLASSROOM_MODEL_DIR

torch.set_num_threads(1)


def test_word_match_is_exact_or_a_long_enough_prefix():
    assert word_match(" Red", "red")
    assert word_match("tri", "triangle")  # a BPE piece that starts the word
    assert not word_match("re", "red")  # too short to mean the word
    assert not word_match("reds", "red")
    assert not word_match("  ", "red")  # a blank piece never counts


def test_cell_coverage_and_object_cells():
    mask = np.zeros((80, 80), bool)
    mask[0:20, 0:40] = True  # (rows 0-19, cols 0-39): the top-left cell and half of the next
    cover = cell_coverage(mask, (0, 0, 80, 80), rows=4, cols=4)
    assert cover.shape == (4, 4)
    assert cover[0, 0] == 1.0 and cover[0, 1] == 1.0 and cover[0, 2] == 0.0 and cover[1, 0] == 0.0
    rng = np.random.default_rng(0)
    scene = scenes.generate_scene(rng, size=96, layout=[("red", "square", 8)], style=scenes.SceneStyle(min_fill=0.9))
    owner, background = object_cells(scene, (0, 0, 96, 96), 8, 8, min_cover=0.5)
    assert (owner >= 0).sum() >= 4
    rows, cols = np.nonzero(owner == 0)
    assert rows.min() >= 5 and cols.min() >= 5  # the bottom-right scene cell is grid cells 5.3..8
    assert background[0, 0] and not background[owner >= 0].any()


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="--scenes"):
        LensEvalSettings(n_scenes=0).validate()
    with pytest.raises(InputError, match="--min-cover"):
        LensEvalSettings(min_cover=1.5).validate()


@pytest.mark.skipif(not (CLASSROOM_MODEL_DIR / "config.json").is_file(), reason="assets/classroom is not built")
def test_short_run_on_the_classroom_model():
    from vitdemo.classroom.report import load_classroom

    model, processor = load_classroom(CLASSROOM_MODEL_DIR)
    report = evaluate_lens(model, processor, LensEvalSettings(n_scenes=5))
    assert report["scenes"] == 5 and report["object_patches"] > 0 and report["background_patches"] > 0
    layers = report["layers"]
    assert [row["layer"] for row in layers] == list(range(model.config.text_config.num_hidden_layers + 1))
    for row in layers:
        for key in ("colour", "shape", "either", "any_colour", "background_any_word"):
            assert 0.0 <= row[key] <= 1.0
        assert row["either"] <= row["colour"] + row["shape"]
        assert row["colour"] <= row["any_colour"]
    # The grid lines up with the objects: projected object patches decode to colour words
    # far more often than background patches do (100 scenes: 0.67 against 0.00).
    assert layers[0]["any_colour"] > layers[0]["background_any_word"] + 0.3
