"""The build recipe runs end to end (a few steps per stage) and writes a loadable model."""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vitdemo.classroom.batch_workers import BatchWorkers
from vitdemo.classroom.model import ClassroomArchitecture, build_processor
from vitdemo.classroom.train import (BuildSettings, StageSettings, WeightAverage, build_classroom, curriculum_objects,
                                    polish_saved_model)


def test_a_short_build_writes_every_stage_and_a_loadable_model(tmp_path):
    short = StageSettings(steps=3, batch_size=4, warmup=1)
    settings = BuildSettings(contrastive=short, language=short, alignment=short, instruction=short,
                             log_every=1, eval_every=2, eval_scenes=2, zero_shot_scenes=4, polish=None)
    out = tmp_path / "classroom"
    build_classroom(out, settings)
    record = json.loads((out / "training.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["contrastive", "language", "alignment", "instruction"]
    assert [e["step"] for e in record["stages"][3]["held_out_during_training"]] == [2, 3]
    assert all(len(s["curve"]) == 3 for s in record["stages"])
    assert not (tmp_path / "classroom.building").exists()
    model = AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    assert model.config.model_type == "llava"
    assert (out / "contrastive" / "config.json").exists()  # the zero-shot caption matcher
    assert len(list((out / "examples").glob("*.png"))) == 3  # the Learn tab's example scenes

    # The polish phase on the saved stage-4 model: a fifth stage, the weights move, the rest is kept.
    settings.polish = StageSettings(steps=2, batch_size=4, warmup=1)
    polished = tmp_path / "polished"
    polish_saved_model(out, polished, settings)
    stages = json.loads((polished / "training.json").read_text())["stages"]
    assert [s["name"] for s in stages][3:] == ["instruction", "polish"]
    assert stages[4]["held_out_after"]["step"] == 5 and stages[4]["answers_after"]
    before = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(polished).state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if v.is_floating_point())
    assert (polished / "contrastive" / "config.json").exists() and not (tmp_path / "polished.building").exists()
    with pytest.raises(ValueError, match="polish a model only once"):
        polish_saved_model(polished, tmp_path / "twice", settings)


def test_a_build_with_the_optional_settings_polishes_saves_averaged_weights_and_keeps_checkpoints(tmp_path):
    short = StageSettings(steps=4, batch_size=4, warmup=1)
    settings = BuildSettings(contrastive=short, language=short, alignment=short, instruction=short,
                             log_every=2, eval_every=2, eval_scenes=2, zero_shot_scenes=4,
                             ema_decay=0.5, ema_start=0.25, keep_checkpoints=True, region_position_weight=1.0,
                             arch=ClassroomArchitecture(vision_feature_layers=(0, -1)), object_curriculum=(1, 2),
                             polish=StageSettings(steps=2, batch_size=4, warmup=1), polish_where_confusable=0.5,
                             polish_form_weights={"where": 1.0}, polish_objects=(0.0, 1.0, 1.0, 1.0))
    out = tmp_path / "classroom"
    build_classroom(out, settings)
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    assert loaded.config.vision_feature_layer == [0, -1]  # the embeddings beside the last layer
    assert loaded.model.multi_modal_projector.linear_1.in_features == 2 * settings.arch.vision_hidden
    stages = json.loads((out / "training.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["contrastive", "language", "alignment", "instruction", "polish"]
    assert stages[3]["held_out_averaged"]["step"] == 4
    assert stages[4]["held_out_after"]["step"] == 6 and len(stages[4]["curve"]) == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    raw = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-4").state_dict()
    final = loaded.state_dict()
    changed = [k for k, v in raw.items() if v.is_floating_point() and not torch.equal(v, final[k])]
    assert changed, "the saved model should be the polished average, not stage 4's last weights"


def test_the_crowding_curriculum_allows_more_objects_step_by_step():
    settings = BuildSettings(object_curriculum=(10, 20))
    assert curriculum_objects(settings, 0) == curriculum_objects(settings, 9) == (1.0, 1.0, 0.0, 0.0)
    assert curriculum_objects(settings, 10) == (1.0, 1.0, 1.0, 0.0)
    assert curriculum_objects(settings, 20) == (1.0, 1.0, 1.0, 1.0)
    assert curriculum_objects(BuildSettings(), 0) is None  # the shipped recipe: the generator's own counts
    with pytest.raises(ValueError, match="object_curriculum"):
        curriculum_objects(BuildSettings(object_curriculum=(20, 10)), 0)


def test_batch_workers_return_the_batches_in_the_order_asked():
    processor = build_processor()
    workers = BatchWorkers(processor, seed=3, workers=2, depth=2)
    try:
        calls = [("caption_batch", (2,)), ("text_batch", (3, 2)), ("caption_batch", (2,)), ("caption_batch", (2,))]
        drawn = list(workers.stream(calls))
    finally:
        workers.close()
    assert [len(b["input_ids"]) for b in drawn] == [2, 3, 2, 2]
    assert ["pixel_values" in b for b in drawn] == [True, False, True, True]
    assert drawn[0]["pixel_values"].shape[1:] == (3, 96, 96)


def test_weight_average_follows_the_exponential_moving_average():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = WeightAverage(layer, decay=0.75)
    with torch.no_grad():
        layer.weight.fill_(4.0)
    average.update()  # 0.75 * 0 + 0.25 * 4
    with torch.no_grad():
        layer.weight.fill_(8.0)
    average.update()  # 0.75 * 1 + 0.25 * 8
    average.copy_to_model()
    assert torch.allclose(layer.weight, torch.full((1, 2), 2.75))
    average.restart()
    average.update()
    average.copy_to_model()
    assert torch.allclose(layer.weight, torch.full((1, 2), 2.75))


def test_weight_average_rejects_a_decay_outside_zero_to_one():
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(torch.nn.Linear(2, 1), decay=1.0)
