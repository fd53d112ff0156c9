"""Components that several tabs or sections build the same way (wiring only, no logic)."""

from __future__ import annotations

import gradio as gr

from vitdemo.ui.image_path import ImagePath


def image_input(value: str | None) -> gr.Image:
    """The Learn tab's image picker: the file's path, never decoded by Gradio (open_image
    checks it on use, so a file that is not an image is a warning, not an internal error)."""
    return ImagePath(value=value, type="filepath", label="Image", height=220, sources=["upload", "clipboard"])
