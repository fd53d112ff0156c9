"""Deletion and insertion curves (issue 20): the area under them, and on the classroom model a
map that points at the object beats random orders."""

from __future__ import annotations

import numpy as np
import pytest

from vitdemo.attention import faithfulness
from vitdemo.classroom import scenes
from vitdemo.classroom.report import load_classroom
from vitdemo.paths import CLASSROOM_MODEL_DIR


def test_area_under_a_curve():
    x = np.linspace(0, 1, 5)
    assert faithfulness.auc(x, np.ones(5)) == pytest.approx(1.0)
    assert faithfulness.auc(x, x) == pytest.approx(0.5)
    assert faithfulness.auc(x, np.array([1.0, 0, 0, 0, 0])) == pytest.approx(0.125)


def test_cell_boxes_tile_the_box_row_major():
    boxes = faithfulness.cell_boxes(2, 3, (0, 0, 30, 20))
    assert boxes[0] == (0, 0, 10, 10) and boxes[2] == (20, 0, 30, 10) and boxes[3] == (0, 10, 10, 20)


@pytest.fixture(scope="module")
def classroom():
    return load_classroom(CLASSROOM_MODEL_DIR)


def test_a_map_on_the_object_deletes_faster_than_random(classroom):
    model, processor = classroom
    scene = scenes.generate_scene(np.random.default_rng(21), size=192, n_objects=3)
    target = scene.objects[0]
    question = f"What color is the {target.shape}?"
    assert sum(o.shape == target.shape for o in scene.objects) == 1  # the question names one object
    token_id = processor.tokenizer(target.color, add_special_tokens=False)["input_ids"][0]
    # An oracle map: the share of each 8x8 cell covered by the object.
    mask = target.mask.reshape(8, 24, 8, 24).mean(axis=(1, 3))
    box = (0, 0, 192, 192)
    oracle = faithfulness.map_curves(model, processor, scene.image, question, token_id, mask, box, steps=8)
    randoms = faithfulness.random_curves(model, processor, scene.image, question, token_id, (8, 8), box,
                                         np.random.default_rng(0), orders=2, steps=8)
    assert oracle.deletion[0] > 0.9  # as asked, the model is sure of the colour
    assert oracle.deletion_auc < 0.6 * randoms.deletion_auc
    assert oracle.insertion_auc > randoms.insertion_auc
    assert oracle.fractions[0] == 0 and oracle.fractions[-1] == 1
