"""An unexpected failure while checking fine-tune data (not a user's mistake) reaches the page
as a message saying what to do, and the log gets its traceback so the cause can be found."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import pytest

from vitdemo.finetune import owners
from vitdemo.finetune import service as svc


def _handler(demo: gr.Blocks, name: str):
    return next(block_fn.fn for block_fn in demo.fns.values() if getattr(block_fn.fn, "__name__", "") == name)


def test_an_unexpected_check_failure_is_logged_with_its_traceback(tiny_llava_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model
    from vitdemo.ui.finetune import create_finetune_tab

    settings = Settings(model=str(tiny_llava_dir), home=tmp_path, device="cpu", quant="none")
    engine = Engine(load_model(str(tiny_llava_dir), device="cpu", quant="none"))
    with gr.Blocks() as demo:
        create_finetune_tab(engine, settings)

    def broken(*args, **kwargs):
        raise OSError("/srv/private/uploads/abc: disk went away")

    monkeypatch.setattr(svc, "check_upload", broken)
    on_check = _handler(demo, "on_check")
    with caplog.at_level(logging.INFO, logger="vitdemo.ui.finetune"):
        with pytest.raises(gr.Error) as raised:
            on_check([str(tmp_path / "data.zip")], None, False, owners.new_token(), None)
    message = str(raised.value)
    assert "Checking the data failed unexpectedly (OSError)" in message and "server log" in message
    assert "/srv/private" not in message  # a server path is for the log, not for a remote user
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is OSError
    assert "disk went away" in str(logged[0].exc_info[1])

    # A user's mistake stays a one-line info message without a traceback.
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitdemo.ui.finetune"):
        with pytest.raises(gr.Error):
            on_check([], None, False, owners.new_token(), None)
    assert caplog.records and all(r.levelno == logging.INFO and r.exc_info is None for r in caplog.records)
