"""An image input whose upload the handler checks, not Gradio.

gr.Image decodes the upload while preprocessing, so a file that is not an image (a text file
renamed .png) fails inside Gradio before the handler runs: a raw "Could not preprocess"
error with server paths and an "Error" badge on every output. This one hands such a file
over as its path; vitdemo.core.images.open_image in the handler then raises ImageError,
which the tab shows as a plain warning.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def lenient_image(**kwargs: Any) -> gr.Image:
    """gr.Image(type="filepath", **kwargs) that passes an unreadable upload on as its path.

    (A plain instance with its preprocess wrapped: a gr.Image subclass is drawn by the page
    only if Gradio's frontend knows its name.)"""
    image = gr.Image(type="filepath", **kwargs)
    strict = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return strict(payload)
        except Exception:  # not decodable here: the handler's open_image says what is wrong
            path = getattr(payload, "path", None)
            return str(path) if path else None

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image
