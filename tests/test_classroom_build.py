"""The build recipe runs end to end (a few steps per stage) and writes a loadable model."""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vitdemo.classroom.model import ClassroomArchitecture
from vitdemo.classroom.train import BuildSettings, StageSettings, WeightAverage, build_classroom


def test_a_short_build_writes_every_stage_and_a_loadable_model(tmp_path):
    short = StageSettings(steps=3, batch_size=4, warmup=1)
    settings = BuildSettings(contrastive=short, language=short, alignment=short, instruction=short,
                             log_every=1, eval_every=2, eval_scenes=2, zero_shot_scenes=4)
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


def test_a_build_with_the_optional_settings_saves_averaged_weights_and_keeps_checkpoints(tmp_path):
    short = StageSettings(steps=4, batch_size=4, warmup=1)
    settings = BuildSettings(contrastive=short, language=short, alignment=short, instruction=short,
                             log_every=2, eval_every=2, eval_scenes=2, zero_shot_scenes=4,
                             ema_decay=0.5, ema_start=0.25, keep_checkpoints=True, region_position_weight=1.0,
                             arch=ClassroomArchitecture(vision_feature_layers=(0, -1)))
    out = tmp_path / "classroom"
    build_classroom(out, settings)
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    assert loaded.config.vision_feature_layer == [0, -1]  # the embeddings beside the last layer
    assert loaded.model.multi_modal_projector.linear_1.in_features == 2 * settings.arch.vision_hidden
    instruction = json.loads((out / "training.json").read_text())["stages"][3]
    assert instruction["held_out_averaged"]["step"] == 4
    raw = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-4").state_dict()
    averaged = loaded.state_dict()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    changed = [k for k, v in raw.items() if v.is_floating_point() and not torch.equal(v, averaged[k])]
    assert changed, "the saved model should be the average, not the last step's weights"


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
