"""The example dataset on the shipped classroom model, with the page defaults.

Targets are relative to what the base model can see: the Chinese answer can only be right
when the model sees the colour right, so the ceiling is the base model's English colour
accuracy on the same held-out images (measured: 27/40 with the current classroom model).
"""

from __future__ import annotations

from pathlib import Path

from vitdemo.paths import REPO_ROOT

import pytest
import torch

ROOT = REPO_ROOT
CLASSROOM = ROOT / "assets" / "classroom"
EXAMPLE = ROOT / "assets" / "datasets" / "chinese_colors.zip"
CHINESE = {"红色": "red", "绿色": "green", "蓝色": "blue", "黄色": "yellow", "紫色": "purple", "橙色": "orange"}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CLASSROOM / "config.json").is_file(), reason="the classroom model is not in assets/")]


def test_chinese_colors_example_learns_and_keeps_old_skills(tmp_path: Path) -> None:
    from vitdemo.classroom.evaluate import answer_batch, held_out_items
    from vitdemo.finetune.data.records import load_dataset
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.trainer import Trainer, make_items, split_records
    from vitdemo.core.loading import load_model
    from vitdemo.finetune.sft import exact_match

    torch.set_num_threads(1)
    lm = load_model(str(CLASSROOM), device="cpu", quant="none")
    records = load_dataset(EXAMPLE, extract_to=tmp_path / "data").usable_records()
    cfg = FinetuneConfig()  # the page defaults
    train, held = split_records(records, cfg.eval_fraction, cfg.seed)
    assert len(held) == 40 and all(r.answer in CHINESE for r in held)
    eval_items = make_items(lm.processor, held)
    english = answer_batch(lm.model, lm.processor, [it.images[0] for it in eval_items],
                           [r.instruction.replace(" Answer in Chinese.", "") for r in held])
    ceiling = sum(a.strip() == CHINESE[r.answer] for a, r in zip(english, held)) / len(held)

    old = held_out_items(40)
    def old_skills(model) -> float:
        answers = answer_batch(model, lm.processor, [it.scene.image for it in old], [it.qa.question for it in old])
        return sum(exact_match(a, it.qa.answer) for a, it in zip(answers, old)) / len(old)

    old_before = old_skills(lm.model)
    trainer = Trainer(lm.model, lm.processor, make_items(lm.processor, train), eval_items, cfg, tmp_path / "job")
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    old_after = old_skills(trainer.unwrapped())
    print(f"EM {before.exact_match:.2f} -> {after.exact_match:.2f} (ceiling {ceiling:.2f}); "
          f"old skills {old_before:.2f} -> {old_after:.2f}; {trainer.state.train_seconds:.0f} s")
    assert before.exact_match < 0.1
    assert after.exact_match >= 0.8 * ceiling and after.exact_match >= 0.5
    # Issue 19's target: the original question forms keep >= 90% of the base model's own score
    # (measured 0.91 / 0.97 = 94% on the checkpoint of 2026-12-01; the one before kept them
    # within 5 points, which this test asked until that checkpoint).
    assert old_after >= 0.9 * old_before
