"""Ground truth of generated scenes and the question forms built on it."""

import numpy as np
import pytest

from vitdemo.classroom import scenes


@pytest.mark.parametrize("seed", range(20))
def test_scene_ground_truth_is_consistent(seed):
    rng = np.random.default_rng(seed)
    scene = scenes.generate_scene(rng, size=150)
    assert 1 <= len(scene.objects) <= scenes.MAX_OBJECTS
    combos = [(o.color, o.shape) for o in scene.objects]
    assert len(set(combos)) == len(combos)
    assert len({o.cell for o in scene.objects}) == len(scene.objects)
    cell = 150 / 3
    for o in scene.objects:
        row, col = divmod(o.cell, 3)
        ys, xs = np.nonzero(o.mask)
        assert len(xs) > 0.1 * cell * cell * 0.4 ** 2, "object too small for its 40% minimum"
        # The whole object lies in its own cell (1 px tolerance for anti-aliasing).
        assert xs.min() >= col * cell - 1 and xs.max() <= (col + 1) * cell + 1
        assert ys.min() >= row * cell - 1 and ys.max() <= (row + 1) * cell + 1
        # Pixels under the mask have the object's colour (within jitter + noise).
        rgb = np.asarray(scene.image)[ys, xs].mean(axis=0)
        assert np.abs(rgb - np.array(scenes.COLORS[o.color])).max() < 40


def test_answers_are_short_lower_case_and_describe_round_trips():
    rng = np.random.default_rng(3)
    forms_seen = set()
    for _ in range(200):
        scene = scenes.generate_scene(rng, size=48, style=scenes.SceneStyle(supersample=1))
        for qa in scenes.questions_for(scene, rng, canonical=False):
            forms_seen.add(qa.form)
            assert qa.answer == qa.answer.lower().strip()
            assert not qa.answer.endswith((".", "!", "?"))
            if qa.target is not None:
                obj = scene.objects[qa.target]
                if qa.form == "color":
                    assert qa.answer == obj.color and obj.shape in qa.question
                if qa.form == "where":
                    assert qa.answer == obj.position
        truth = {(o.color, o.shape, o.position) for o in scene.objects}
        assert scenes.parse_description(scenes.describe(scene)) == truth
    assert forms_seen == set(scenes.FORMS)


def test_exists_negatives_are_absent():
    rng = np.random.default_rng(5)
    for _ in range(300):
        scene = scenes.generate_scene(rng, size=48, style=scenes.SceneStyle(supersample=1))
        qa = scenes.question_for(scene, "exists", rng)
        present = {f"{o.color} {o.shape}" for o in scene.objects}
        named = qa.question.removeprefix("Is there a ").removesuffix("?")
        assert (named in present) == (qa.answer == "yes")


def test_layout_fixes_objects_and_cells():
    rng = np.random.default_rng(0)
    layout = [("red", "circle", 0), ("blue", "square", 8)]
    scene = scenes.generate_scene(rng, size=90, layout=layout)
    assert [(o.color, o.shape, o.cell) for o in scene.objects] == layout
    assert scenes.describe(scene) == "a red circle at top left and a blue square at bottom right"
