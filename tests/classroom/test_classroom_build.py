"""The build recipe runs end to end (a few steps per stage) and writes a loadable model."""

import json

from transformers import AutoModelForImageTextToText, AutoProcessor

from vitdemo.classroom.batch_workers import BatchWorkers
from vitdemo.classroom.model import build_processor
from vitdemo.classroom.train import BuildSettings, StageSettings, build_classroom


def test_a_short_build_writes_every_stage_and_a_loadable_model(tmp_path):
    short = StageSettings(steps=3, batch_size=4, warmup=1)
    settings = BuildSettings(contrastive=short, language=short, alignment=short, instruction=short,
                             log_every=1, eval_every=2, eval_scenes=2, zero_shot_scenes=4,
                             backgrounds=short)
    out = tmp_path / "classroom"
    build_classroom(out, settings)
    record = json.loads((out / "training.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["contrastive", "language", "alignment", "instruction",
                                                    "backgrounds"]
    # The last stage checks the background-shifted scenes too.
    assert set(record["stages"][4]["shifted_held_out_after"]["per_form"]) <= {
        "color", "shape", "where", "count", "exists", "describe"}
    assert [e["step"] for e in record["stages"][3]["held_out_during_training"]] == [2, 3]
    assert all(len(s["curve"]) == 3 for s in record["stages"])
    assert not (tmp_path / "classroom.building").exists()
    model = AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    assert model.config.model_type == "llava"
    assert (out / "contrastive" / "config.json").exists()  # the zero-shot caption matcher
    assert len(list((out / "examples").glob("*.png"))) == 3  # the Learn tab's example scenes


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
