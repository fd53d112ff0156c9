"""The build recipe runs end to end (a few steps per stage) and writes a loadable model."""

import json

from transformers import AutoModelForImageTextToText, AutoProcessor

from vitdemo.classroom.train import BuildSettings, StageSettings, build_classroom


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
