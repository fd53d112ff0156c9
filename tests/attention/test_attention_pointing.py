"""Pointing game on the classroom model: the default map's peak lands on the asked object."""

from __future__ import annotations

from pathlib import Path

from vitdemo.paths import REPO_ROOT

ROOT = REPO_ROOT
CLASSROOM = ROOT / "assets" / "classroom"
N_SCENES = 40  # held-out scenes; every targeted question of each (about 3 per scene)
# The target: the default map's peak on the asked object's cell in >= 80% of cases
# (chance: 11%). A broken layout, capture or map falls far below it.
TARGET = 0.80


def test_pointing_game_default_map_meets_the_target():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vitdemo.attention.maps import pointing_game
    from vitdemo.classroom import evaluate

    model = AutoModelForImageTextToText.from_pretrained(CLASSROOM).eval()
    processor = AutoProcessor.from_pretrained(CLASSROOM)
    # A seed the training never saw and the classroom's own held-out evaluation does not use.
    items = [i for i in evaluate.held_out_items(N_SCENES, seed=evaluate.HELD_OUT_SEED + 101) if i.qa.target is not None]
    report = pointing_game(model, processor, items)
    assert report["n"] == len(items) >= 2 * N_SCENES
    assert report["accuracy"] >= TARGET, report
