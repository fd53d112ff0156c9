"""The retention guard on the shipped classroom model: an upload that varies a question the
model already answers ("What color is the circle? Answer in Chinese.", no replay records)
must not take the plain question's English answer away (bench/retention_guard.py has the
full table; docs/finetune.md shows it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitdemo.paths import CLASSROOM_MODEL_DIR, DATASETS_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CLASSROOM_MODEL_DIR / "config.json").is_file(),
                                 reason="the classroom model is not in assets/")]


def test_same_form_variant_keeps_the_plain_question(tmp_path: Path) -> None:
    from vitdemo.classroom.evaluate import answer_batch, held_out_items
    from vitdemo.core.loading import load_model
    from vitdemo.finetune.config import FinetuneConfig
    from vitdemo.finetune.data.records import load_dataset
    from vitdemo.finetune.sft import exact_match
    from vitdemo.finetune.trainer import Trainer, make_items, split_records

    torch.set_num_threads(1)
    lm = load_model(str(CLASSROOM_MODEL_DIR), device="cpu", quant="none")
    records = load_dataset(DATASETS_DIR / "chinese_colors.zip", extract_to=tmp_path / "data").usable_records()
    records = [r for r in records if r.instruction.endswith("Answer in Chinese.")]  # the upload, no replay
    assert len(records) == 200
    cfg = FinetuneConfig()  # the page defaults: the guard is on
    train, held = split_records(records, cfg.eval_fraction, cfg.seed)
    plain = [it for it in held_out_items(60) if it.qa.form == "color"]  # "What color is the {shape}?"

    def plain_score(model) -> float:
        answers = answer_batch(model, lm.processor, [it.scene.image for it in plain], [it.qa.question for it in plain])
        return sum(exact_match(a, it.qa.answer) for a, it in zip(answers, plain)) / len(plain)

    before = plain_score(lm.model)
    trainer = Trainer(lm.model, lm.processor, make_items(lm.processor, train), make_items(lm.processor, held), cfg,
                      tmp_path / "job")
    trainer.train()
    after = plain_score(trainer.unwrapped())
    skill = trainer.evaluate()
    report = trainer.retention_report()
    print(f"plain colour {before:.2f} -> {after:.2f} ({len(plain)}); Chinese {skill.exact_match:.2f}; "
          f"agreement {report['agreement']:.2f} ({report['n']}); {trainer.state.train_seconds:.0f} s")
    assert before >= 0.9
    assert after >= 0.85 * before, f"the plain question kept {after:.0%} of {before:.0%}: the guard failed"
    assert report["agreement"] >= 0.85
    assert skill.exact_match >= 0.75  # and the new skill is still learned (bench: 90%+)
