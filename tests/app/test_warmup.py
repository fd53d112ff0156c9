"""The warm-up answer at server start (vitdemo.serving.warmup)."""

from __future__ import annotations

from pathlib import Path

from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from vitdemo.serving.warmup import warm_up


def test_warm_up_answers_and_leaves_the_engine_free(tiny_llava_dir: Path) -> None:
    engine = Engine(load_model(tiny_llava_dir))
    seconds = warm_up(engine)
    assert seconds is not None and seconds > 0
    with engine.locked():  # nothing left holding the model
        pass


def test_a_failing_warm_up_is_logged_not_raised(tiny_llava_dir: Path, monkeypatch, caplog) -> None:
    engine = Engine(load_model(tiny_llava_dir))

    def broken(*args, **kwargs):
        raise RuntimeError("no memory for the warm-up")

    monkeypatch.setattr("vitdemo.serving.warmup.stream_answer", broken)
    assert warm_up(engine) is None
    assert "warm-up answer failed" in caplog.text and "no memory for the warm-up" in caplog.text
