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


def test_questions_about_what_is_not_there_name_it_and_answer_no():
    rng = np.random.default_rng(8)
    kinds = set()
    for _ in range(300):
        scene = scenes.generate_scene(rng, size=48, style=scenes.SceneStyle(supersample=1))
        qa = scenes.question_for(scene, scenes.ABSENT, rng, canonical=False)
        if qa is None:  # every shape (or every colour) is there: nothing to ask about
            continue
        missing = qa.answer.removeprefix("no ")
        assert qa.form == scenes.ABSENT and qa.target is None and qa.answer.startswith("no ")
        if missing.endswith(" object"):  # "What shape is the purple object?" -> "no purple object"
            color = missing.removesuffix(" object")
            assert color in scenes.COLORS and color in qa.question
            assert all(o.color != color for o in scene.objects)
            kinds.add("shape")
        else:  # "What color is the circle?" -> "no circle"
            assert missing in scenes.SHAPES and missing in qa.question
            assert all(o.shape != missing for o in scene.objects)
            kinds.add("color")
    assert kinds == {"color", "shape"}
    assert scenes.ABSENT not in scenes.FORMS  # the stages that ask every form do not ask it


def test_layout_fixes_objects_and_cells():
    rng = np.random.default_rng(0)
    layout = [("red", "circle", 0), ("blue", "square", 8)]
    scene = scenes.generate_scene(rng, size=90, layout=layout)
    assert [(o.color, o.shape, o.cell) for o in scene.objects] == layout
    assert scenes.describe(scene) == "a red circle at top left and a blue square at bottom right"


def _saturation(rgb) -> float:
    hi, lo = max(rgb), min(rgb)
    return 0.0 if hi == 0 else (hi - lo) / hi


def test_varied_backgrounds_span_dark_to_white_and_never_take_an_object_colour():
    rng = np.random.default_rng(11)
    backgrounds = [scenes.background_color(rng) for _ in range(2000)]
    brightness = [max(rgb) for rgb in backgrounds]
    assert min(brightness) < 60 and max(brightness) > 245  # dark-mode screenshots to white paper
    assert sum(_saturation(rgb) > 0.05 for rgb in backgrounds) > 500  # tints, not only greys
    weakest_object = min(_saturation(rgb) for rgb in scenes.COLORS.values())
    assert max(_saturation(rgb) for rgb in backgrounds) < 0.42 < weakest_object


@pytest.mark.parametrize("seed", range(10))
def test_varied_scenes_keep_their_ground_truth(seed):
    """On any background, blurred or not, each object still has its colour and its cell."""
    rng = np.random.default_rng(seed)
    scene = scenes.generate_scene(rng, size=150, style=scenes.VARIED_STYLE)
    cell = 150 / 3
    corner = np.asarray(scene.image)[:3, :3].reshape(-1, 3).mean(axis=0)
    for o in scene.objects:
        row, col = divmod(o.cell, 3)
        ys, xs = np.nonzero(o.mask)
        assert xs.min() >= col * cell - 1 and xs.max() <= (col + 1) * cell + 1
        assert ys.min() >= row * cell - 1 and ys.max() <= (row + 1) * cell + 1
        inner = np.asarray(scene.image)[ys, xs].astype(float)
        rgb = np.median(inner, axis=0)  # the median ignores the blurred rim
        assert np.abs(rgb - np.array(scenes.COLORS[o.color])).max() < 45
        assert np.abs(rgb - corner).max() > 30, "the object would vanish into its background"


def test_the_standard_style_draws_what_it_always_drew():
    """The standard scenes (and so the held-out set and the recipe's stages) are unchanged:
    the same seed gives the same pixels whatever the varied style adds."""
    first = scenes.generate_scene(np.random.default_rng(4), size=64)
    again = scenes.generate_scene(np.random.default_rng(4), size=64, style=scenes.SceneStyle())
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    shade = np.asarray(first.image).reshape(-1, 3)
    assert np.median(shade) > 200  # light paper


def test_unknown_background_is_refused():
    with pytest.raises(ValueError, match="unknown background"):
        scenes.generate_scene(np.random.default_rng(0), size=48, style=scenes.SceneStyle(background="plaid"))


def test_absent_scoring_counts_no_answers_per_kind(monkeypatch):
    from vitdemo.classroom import evaluate

    items = evaluate.absent_items(30, seed=11)
    # A model that answers "no ..." right to colour questions and guesses "red" to shape questions.
    fake = lambda model, processor, images, questions: [  # noqa: E731
        item.qa.answer if "color" in item.qa.question else "red" for item in items]
    monkeypatch.setattr(evaluate, "answer_batch", fake)
    report = evaluate.evaluate_absent(None, None, 30, seed=11)
    colour = sum("color" in i.qa.question for i in items)
    assert report["n_questions"] == len(items) > 20
    assert report["per_kind"] == {"color": 1.0, "shape": 0.0}
    assert report["exact_match"] == colour / len(items)
