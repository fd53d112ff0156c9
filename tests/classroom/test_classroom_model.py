"""The shipped classroom model: loadable like a Hub model, small, and right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitdemo.classroom import evaluate, scenes
from vitdemo.classroom.model import answer_token_cap
from vitdemo.classroom.report import load_classroom, load_contrastive
from vitdemo.paths import CLASSROOM_MODEL_DIR

# A held-out seed of its own: never used in training nor by eval-classroom's default.
TEST_SEED = 424_242
# The issue asks the tests for >= 90% exact match on a small held-out set. Greedy answers
# are deterministic, so this fails on any regression of the model, processor, chat
# template or batching.
EXACT_MATCH_FLOOR = 0.90
# Per question form, on only 40 scenes (some forms have ~25 questions): a little lower.
PER_FORM_FLOOR = 0.80
# Background-shifted scenes: a regression guard below what the shipped model scores (93.6%
# on eval-classroom's 500 shifted scenes, "describe" 87.0%); the target there is 90%.
SHIFTED_FLOOR = 0.88  # this set of 40 scenes: 91.5% (the evening's model 93.2%, the morning's 84.3%, before any backgrounds 46%)
SHIFTED_PER_FORM_FLOOR = 0.75
# Questions about what is not there: 99.1% on eval-classroom's 447; this set's 37: 100%.
ABSENT_FLOOR = 0.85

@pytest.fixture(scope="module")
def classroom():
    return load_classroom(CLASSROOM_MODEL_DIR)


def test_checkpoint_is_small_and_complete():
    files = [p for p in Path(CLASSROOM_MODEL_DIR).rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total <= 20 * 1024 * 1024, f"assets/classroom is {total / 2**20:.1f} MB, the budget is 20 MB"
    names = {p.name for p in files}
    for required in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
        assert required in names
    assert (Path(CLASSROOM_MODEL_DIR) / "contrastive" / "model.safetensors").is_file()


def test_architecture_and_tokenizer(classroom):
    model, processor = classroom
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert grid >= 8
    tok = processor.tokenizer
    for text in ("What color is the circle?", "红色", "Ça va? 🙂"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_held_out_exact_match(classroom):
    model, processor = classroom
    scores = evaluate.evaluate_answers(model, processor, n_scenes=40, seed=TEST_SEED)
    assert scores["n_questions"] >= 150
    assert scores["exact_match"] >= EXACT_MATCH_FLOOR, scores
    assert min(scores["per_form"].values()) >= PER_FORM_FLOOR, scores
    assert scores["describe_all_objects"] >= PER_FORM_FLOOR, scores


def test_background_shifted_exact_match(classroom):
    """Users' own pictures: any grey from white to dark, pale and dark tints, blur, small to
    cell-filling objects (scenes.VARIED_STYLE), on a held-out seed of their own."""
    model, processor = classroom
    scores = evaluate.evaluate_answers(model, processor, n_scenes=40, seed=evaluate.SHIFTED_SEED + TEST_SEED,
                                       style=scenes.VARIED_STYLE)
    assert scores["exact_match"] >= SHIFTED_FLOOR, scores
    assert min(scores["per_form"].values()) >= SHIFTED_PER_FORM_FLOOR, scores


def test_a_question_about_what_is_not_there_is_answered_no(classroom):
    """"What color is the circle?" about a scene without a circle: "no circle", not a guessed
    colour (the model before its last stage answered 0% of these right)."""
    model, processor = classroom
    scores = evaluate.evaluate_absent(model, processor, n_scenes=40, seed=evaluate.ABSENT_SEED + TEST_SEED)
    assert scores["n_questions"] >= 30
    assert scores["exact_match"] >= ABSENT_FLOOR, scores


def test_generation_config_caps_answers_at_the_longest_one_needed(classroom):
    model, processor = classroom
    cap = model.generation_config.max_new_tokens
    assert cap == answer_token_cap(processor.tokenizer)
    rng = np.random.default_rng(TEST_SEED + 2)
    longest = max(len(processor.tokenizer(scenes.describe(scenes.generate_scene(rng, size=24, n_objects=4)),
                                          add_special_tokens=False)["input_ids"]) for _ in range(300))
    assert longest + 1 <= cap <= 2 * longest + 8  # room for every answer, none for babble


def test_answers_work_at_any_input_size(classroom):
    model, processor = classroom
    rng = np.random.default_rng(TEST_SEED + 1)
    images, questions, truth = [], [], []
    for size in (48, 100, 333, 640):
        scene = scenes.generate_scene(rng, size=size, n_objects=2)
        images.append(scene.image)
        questions.append("How many shapes are there?")
        truth.append("two")
    assert evaluate.answer_batch(model, processor, images, questions) == truth


def test_zero_shot_caption_matching(classroom):
    _, processor = classroom
    accuracy = evaluate.evaluate_zero_shot(load_contrastive(CLASSROOM_MODEL_DIR), processor, 60, seed=TEST_SEED + 2)
    assert accuracy >= 0.85, accuracy
