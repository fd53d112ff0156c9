"""The "join this class" panel: the address students open, and its QR code for phones.

Shown only when the server listens beyond loopback (`--host 0.0.0.0`); built once with the
page, so it costs nothing per request.
"""

from __future__ import annotations

import gradio as gr

from vitdemo.config import Settings
from vitdemo.serving.join import join_url, qr_image


def create_join_panel(settings: Settings, *, lan: str | None = None) -> str | None:
    """Add the panel to the current Blocks when others can join; returns the join URL or None."""
    url = join_url(settings.host, settings.port, lan=lan)
    if url is None:
        return None
    login = " Sign in with the user name and password your teacher gives you." if settings.auth else ""
    with gr.Row(elem_id="vitdemo-join", equal_height=True):
        gr.Markdown(f"**Join this class:** open **{url}** on a laptop or phone on the same network, "
                    f"or scan the code.{login}", elem_id="vitdemo-join-text")
        qr = qr_image(url)
        if qr is not None:
            gr.Image(qr, show_label=False, interactive=False, height=168, width=168, buttons=[],
                     container=False, scale=0, min_width=168, elem_id="vitdemo-join-qr",
                     alt_text=f"QR code of {url}")
    return url
