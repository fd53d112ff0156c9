"""Components that several tabs or sections build the same way (wiring only, no logic)."""

from __future__ import annotations

import gradio as gr


def image_input(value: str | None) -> gr.Image:
    """The Learn tab's image picker (a file path, opened safely on use)."""
    return gr.Image(value=value, type="filepath", label="Image", height=220, sources=["upload", "clipboard"])
