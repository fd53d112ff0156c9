"""Learn tab defaults that agree with the default image, and a difference map centred on
zero (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdemo.learn.defaults import defaults_for, known_answers
from vitdemo.paths import CLASSROOM_MODEL_DIR

FIRST = CLASSROOM_MODEL_DIR / "examples" / "example_0.png"  # the Learn tab's default image
needs_classroom = pytest.mark.skipif(not FIRST.is_file(), reason="the classroom model is not shipped here")


@needs_classroom
def test_defaults_agree_with_the_default_image() -> None:
    truth = dict(known_answers(FIRST))
    assert truth, "no recorded answers for the default image"
    d = defaults_for(FIRST)
    # The default image is one orange square: no question about a circle.
    assert "circle" not in d.question + d.fewshot_question + d.fewshot_text
    assert d.question in truth and d.question != d.fewshot_question
    assert d.fewshot_examples and all(truth.get(q) == a for q, a in d.fewshot_examples), d.fewshot_examples
    assert all(q != d.question for q, _ in d.fewshot_examples)  # the examples do not give the answer away


@needs_classroom
def test_the_classroom_model_answers_the_default_question_right() -> None:
    from vitdemo.chat import conversation
    from vitdemo.core.engine import Engine
    from vitdemo.core.images import open_image
    from vitdemo.core.loading import load_model

    engine = Engine(load_model(str(CLASSROOM_MODEL_DIR), device="cpu"))
    d = defaults_for(FIRST)
    conv = [conversation.user_message(d.question, n_images=1)]
    got = conversation.answer(engine, conv, [open_image(str(FIRST))], conversation.GenerationSettings(max_new_tokens=8))
    assert got == dict(known_answers(FIRST))[d.question]


def test_images_without_records_get_generic_defaults(tmp_path: Path) -> None:
    picture = tmp_path / "mine.png"
    Image.new("RGB", (20, 20), "white").save(picture)
    d = defaults_for(picture)
    assert d.question == "Describe the image." and "circle" not in d.fewshot_text
    assert defaults_for(None).question == "Describe the image."


def test_difference_map_is_centred_on_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Section 4's difference: white where nothing changed, even when every value is below 0.04."""
    from vitdemo.learn.compare import AdapterComparison
    from vitdemo.ui import learn_compare

    picture = tmp_path / "white.png"
    Image.new("RGB", (64, 64), "white").save(picture)
    base = np.array([[0.3, 0.2], [0.25, 0.25]], np.float32)
    tuned = base + np.array([[-0.17, 0.0], [0.04, 0.13]], np.float32) * np.array([[1, 1], [1, 0]])  # 0 at (0,1), (1,1)
    comparison = AdapterComparison("q", "a", "b", base, tuned, (0.0, 0.0, 64.0, 64.0))
    monkeypatch.setattr(learn_compare, "compare_adapter", lambda *a, **k: comparison)
    outputs = learn_compare._run(None, str(picture), "q", "adapter", "jet")
    diff = np.asarray(outputs[4].convert("RGB")).astype(int)
    unchanged = diff[48, 48]  # cell (1, 1): no change
    assert unchanged.min() > 225 and np.ptp(unchanged) < 20, unchanged  # white-ish, not a colour
    less, more = diff[16, 16], diff[48, 16]  # -0.17 (blue), +0.04 (faint red)
    assert less[2] > less[0] + 40, less
    assert more[0] > more[2] and more[0] - more[2] < less[2] - less[0], (more, less)
