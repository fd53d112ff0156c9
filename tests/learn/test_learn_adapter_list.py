"""Learn section 4's adapter list follows the jobs that finish while the page is open: it is
listed again when the section is opened (issue 18), new choices only when they changed."""

from __future__ import annotations

from typing import Any

import pytest


def _handler(demo: Any, name: str) -> Any:
    fns = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert len(fns) == 1, f"{len(fns)} handlers named {name}"
    return fns[0]


def test_opening_section_4_lists_new_adapters(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import gradio as gr

    from vitdemo.ui import learn_compare
    from vitdemo.ui.learn import SECTIONS

    listed = [[("example: a", "/adapters/a")]]
    monkeypatch.setattr(learn_compare, "available_adapters", lambda home, owner=None: list(listed[-1]))
    with gr.Blocks() as demo:
        section = gr.Radio(list(SECTIONS), value=SECTIONS[0])
        learn_compare.create_compare_section(None, tmp_path, None, None, None, opened_by=(section, SECTIONS[3]))
    on_open = _handler(demo, "on_open")
    shown = (("example: a", "/adapters/a"),)  # what the page was built with
    # A job finished after the page was built: opening the section sends the new choices.
    listed.append([("example: a", "/adapters/a"), ("job 7", "/jobs/7/adapter")])
    sent, shown = on_open(SECTIONS[3], "/adapters/a", shown)
    assert isinstance(sent, dict) and sent.get("__type__") == "update", sent
    assert ("job 7", "/jobs/7/adapter") in sent["choices"] and sent["value"] == "/adapters/a"
    # Opening it again with nothing new: a plain value, no update (no component copy per open).
    sent, shown_again = on_open(SECTIONS[3], "/adapters/a", shown)
    assert sent == "/adapters/a" and shown_again == shown
    # Other sections send nothing new.
    assert on_open(SECTIONS[0], "/adapters/a", shown) == ("/adapters/a", shown)
    # A chosen adapter that is gone falls back to the first one listed.
    listed.append([("example: a", "/adapters/a")])
    sent, _ = on_open(SECTIONS[3], "/jobs/7/adapter", shown)
    assert sent["value"] == "/adapters/a"
