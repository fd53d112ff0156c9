"""A cached component signature gives the same session config as Gradio computes without it."""

from __future__ import annotations

import gradio as gr
from gradio.state_holder import SessionState

from vitdemo.ui.session_cost import cache_init_signatures


def _page() -> gr.Blocks:
    """A page with a component the app does not use (so no earlier test cached its signature)."""
    with gr.Blocks() as demo:
        colour = gr.ColorPicker("#ff0000", label="colour", info="pick one")
        out = gr.Textbox(label="answer")
        gr.Button("Ask").click(lambda x: x, colour, out)
    return demo


def test_the_session_config_is_the_same_with_cached_signatures() -> None:
    demo = _page()
    init = gr.ColorPicker.__dict__["__init__"]
    earlier = init.__dict__.pop("__signature__", None)  # as Gradio meets it: nothing cached
    try:
        before = SessionState(demo).config_values
        assert cache_init_signatures(demo) >= 1
        assert "info" in init.__signature__.parameters
        assert cache_init_signatures(demo) == 0  # nothing twice
        after = SessionState(demo).config_values
        assert after == before
        picker = next(c for c in after.values() if c.get("type") == "colorpicker")
        assert picker["props"]["label"] == "colour" and picker["props"]["info"] == "pick one"
    finally:
        init.__dict__.pop("__signature__", None)
        if earlier is not None:
            init.__signature__ = earlier
