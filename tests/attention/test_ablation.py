"""Remove a part and ask again (issue 20): boxes, the four removal methods, layer and head
knock-outs, the `ablate` command, and the classroom model's answers changing for the right reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdemo.attention import interventions
from vitdemo.attention.ablation import ablate
from vitdemo.attention.layouts import build_layout
from vitdemo.chat.conversation import GenerationSettings, build_inputs, stream_answer, user_message
from vitdemo.classroom import scenes
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from vitdemo.errors import InputError
from vitdemo.paths import CLASSROOM_MODEL_DIR, REPO_ROOT


@pytest.fixture(scope="module")
def tiny(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.fixture(scope="module")
def classroom() -> Engine:
    return Engine(load_model(CLASSROOM_MODEL_DIR))


@pytest.mark.parametrize("box, message", [
    ((10, 10, 5, 20), "empty or inverted"),
    ((10, 10, 10, 20), "empty or inverted"),
    ((200, 200, 300, 300), "outside the image"),
    ((-5, -5, 100, 80), "covers the whole image"),
    ((1, 2, 3), "needs 4 numbers"),
    ((0, 0, float("nan"), 4), "not finite"),
])
def test_bad_boxes_get_a_clear_error(box, message):
    with pytest.raises(InputError, match=message):
        interventions.check_box(box, (100, 80))


def test_a_box_partly_outside_is_clipped():
    assert interventions.check_box((-10, 5.4, 30, 500), (100, 80)) == (0, 5, 30, 80)


def test_blank_paints_the_box_with_the_background_and_nothing_else():
    image = Image.new("RGB", (60, 60), (240, 240, 240))
    image.paste((200, 30, 30), (20, 20, 40, 40))
    painted = interventions.paint_boxes(image, [(18, 18, 42, 42)], "blank")
    pixels, before = np.asarray(painted), np.asarray(image)
    assert (pixels[18:42, 18:42] == (240, 240, 240)).all()
    outside = np.ones((60, 60), bool)
    outside[18:42, 18:42] = False
    assert (pixels[outside] == before[outside]).all()
    assert np.asarray(image)[30, 30].tolist() == [200, 30, 30]  # the original is untouched
    mean = interventions.paint_boxes(image, [(18, 18, 42, 42)], "mean-colour")
    assert np.asarray(mean)[30, 30].tolist() == np.asarray(image).reshape(-1, 3).mean(0).astype(int).tolist()


def test_cells_in_a_box_are_the_covered_ones(tiny: Engine):
    image = Image.new("RGB", (64, 64), "white")
    inputs = build_inputs(tiny.processor, [user_message("What is it?", 1)], [image])
    layout = build_layout(tiny.model.config, tiny.processor, inputs, [image])
    grid = layout.grid(0)  # 4 x 4 cells of 16 px
    (tile,) = layout.tiles_of(0)
    one = interventions.cells_in_box(layout, 0, (16, 16, 32, 32))  # exactly cell (1, 1)
    assert one.tolist() == [int(tile.positions[1 * grid.cols + 1])]
    small = interventions.cells_in_box(layout, 0, (20, 20, 22, 22))  # tiny: the cell holding its centre
    assert small.tolist() == one.tolist()
    half = interventions.cells_in_box(layout, 0, (0, 0, 64, 32))  # the top two rows
    assert sorted(half.tolist()) == sorted(int(p) for p in tile.positions[:2 * grid.cols])


def test_mask_positions_hides_tokens_in_a_copy(tiny: Engine):
    image = Image.new("RGB", (64, 64), "white")
    inputs = build_inputs(tiny.processor, [user_message("What is it?", 1)], [image])
    masked = interventions.mask_positions(inputs, np.array([3, 4]))
    assert masked["attention_mask"][0, 3:5].tolist() == [0, 0]
    assert inputs["attention_mask"][0, 3:5].tolist() == [1, 1]


@pytest.mark.parametrize("method", interventions.REGION_METHODS)
def test_every_region_method_moves_the_tiny_models_probability(tiny: Engine, method: str):
    image = Image.new("RGB", (64, 64), (250, 250, 250))
    image.paste((20, 40, 220), (16, 16, 48, 48))
    outcome = ablate(tiny, image, "What colour is it?", box=(12, 12, 52, 52), method=method, max_new_tokens=3)
    assert outcome.method == method and outcome.box == (12, 12, 52, 52)
    assert 0 <= outcome.p_after <= 1 and 0 < outcome.p_before <= 1
    assert abs(outcome.p_after - outcome.p_before) > 1e-6  # the removal reached the model
    assert (outcome.removed_tokens > 0) == (method not in interventions.PIXEL_METHODS)
    assert outcome.before.result is not None and outcome.after.result is not None  # maps both times


def test_layer_and_head_knock_outs_change_the_model_and_leave_no_hooks(tiny: Engine):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    decoder = tiny.model.get_decoder()
    layer = ablate(tiny, image, "What colour is it?", layer=0, max_new_tokens=3)
    head = ablate(tiny, image, "What colour is it?", layer=1, head=1, max_new_tokens=3)
    assert layer.method == "layer" and head.method == "head"
    assert abs(layer.p_after - layer.p_before) > 1e-6 and abs(head.p_after - head.p_before) > 1e-6
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in decoder.modules())
    # The chat still works the same afterwards.
    again = ablate(tiny, image, "What colour is it?", layer=0, max_new_tokens=3)
    assert again.p_before == pytest.approx(layer.p_before)
    assert "".join(stream_answer(tiny, [user_message("What is it?", 1)], [image], GenerationSettings(max_new_tokens=2)))
    with pytest.raises(InputError, match="layer 9 does not exist"):
        ablate(tiny, image, "What colour is it?", layer=9)
    with pytest.raises(InputError, match="head 99 does not exist"):
        ablate(tiny, image, "What colour is it?", layer=0, head=99)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "choose what to remove"),
    ({"box": (0, 0, 10, 10), "layer": 0}, "not both"),
    ({"head": 1}, "needs its layer"),
    ({"box": (0, 0, 10, 10), "method": "erase"}, "unknown method"),
])
def test_requests_that_name_no_intervention_are_refused(tiny: Engine, kwargs, message):
    with pytest.raises(InputError, match=message):
        ablate(tiny, Image.new("RGB", (64, 64)), "What is it?", **kwargs)


def _three_objects() -> scenes.Scene:
    return scenes.generate_scene(np.random.default_rng(3), size=192, n_objects=3)


def test_removing_the_asked_object_flips_the_classroom_models_answer(classroom: Engine):
    scene = _three_objects()
    target, other = scene.objects[0], scene.objects[1]
    question = f"Is there a {target.color} {target.shape}?"
    gone = ablate(classroom, scene.image, question, box=target.box)
    assert (gone.before.answer, gone.after.answer) == ("yes", "no")
    assert gone.p_before > 0.9 > 0.1 > gone.p_after
    kept = ablate(classroom, scene.image, question, box=other.box)
    assert kept.after.answer == "yes" and kept.p_after > 0.9


def test_ablate_command_prints_one_json_object(tmp_path: Path):
    scene = _three_objects()
    path = tmp_path / "scene.png"
    scene.image.save(path)
    target = scene.objects[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    box = ",".join(str(v) for v in target.box)
    proc = subprocess.run([sys.executable, "-m", "vitdemo", "ablate", "--image", str(path), "--question",
                           f"Is there a {target.color} {target.shape}?", "--box", box, "--json",
                           "--out", str(tmp_path / "out")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert payload["answer_before"] == "yes" and payload["answer_after"] == "no"
    assert payload["method"] == "blank" and payload["p_before"] > payload["p_after"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"after_input.png", "map_before.png", "map_after.png"}
    bad = subprocess.run([sys.executable, "-m", "vitdemo", "ablate", "--image", str(path), "--question", "Is it?",
                          "--box", "50,50,10,10"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "empty or inverted" in bad.stderr and "Traceback" not in bad.stderr
