"""An image picker that hands the handler the uploaded file's path, undecoded.

gr.Image decodes every upload with PIL before the handler runs, even with
type="filepath" (it re-saves the picture into its cache). A text file renamed .png then
fails inside Gradio ("Could not preprocess input component ... UnidentifiedImageError",
with server paths, every output an "Error" badge, a traceback in the log), and a huge
picture is decoded before our pixel limit is checked. This one passes the path on, so
vitdemo.core.images.open_image (header checks first, ImageError with a clear message)
is the only thing that ever decodes it, as in the Chat tab.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import gradio as gr


class ImagePath(gr.Image):
    """gr.Image whose value for the handler is the upload's path (or the bytes of a pasted
    data URL), never decoded here, whatever `type` says.

    No __init__ of its own: Gradio sends the page the props named in the constructor's
    signature, so a (*args, **kwargs) one would lose the label, elem_id and the rest.
    """

    is_template = True  # drawn by the browser as the ordinary Image component

    def preprocess(self, payload: Any) -> str | bytes | None:  # type: ignore[override]
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1] if "," in url else "", validate=False)
            except (binascii.Error, ValueError):
                return b""  # open_image refuses it with a message a person can act on
        return getattr(payload, "path", None)
