"""A cached component signature gives the same session config as Gradio computes without it."""

from __future__ import annotations

import gradio as gr
from gradio.state_holder import SessionState

from vitdemo.ui.session_cost import cache_init_signatures


class _Labelled(gr.Textbox):
    """A component class no other test has seen, so its signature is not cached yet."""

    def __init__(self, value: str = "", *, hint: str = "a hint", **kwargs) -> None:
        self.hint = hint
        super().__init__(value=value, **kwargs)


def _page() -> gr.Blocks:
    with gr.Blocks() as demo:
        box = _Labelled("hello", hint="shown", label="question")
        out = gr.Textbox(label="answer")
        gr.Button("Ask").click(lambda x: x, box, out)
    return demo


def test_the_session_config_is_the_same_with_cached_signatures() -> None:
    demo = _page()
    init = _Labelled.__dict__["__init__"]
    assert not hasattr(init, "__signature__")
    before = SessionState(demo).config_values
    try:
        assert cache_init_signatures(demo) >= 1
        assert "hint" in init.__signature__.parameters
        assert cache_init_signatures(demo) == 0  # nothing twice
        after = SessionState(demo).config_values
        assert after == before
        box_config = next(c for c in after.values() if c.get("type") == "_labelled")
        assert box_config["props"]["hint"] == "shown"  # the subclass's own argument is still in its config
    finally:
        del init.__signature__
