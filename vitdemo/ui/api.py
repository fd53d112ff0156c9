"""The app's public API: the endpoints gradio_client and the API page show, and nothing else.

`/chat` is wired by the Chat tab (vitdemo.ui.chat); `/attend` here. Every other event is
the page talking to its own server: `restrict_api` turns its API visibility off
("private": not on the API page, refused by gradio_client), so a new event is private
unless it is added to PUBLIC_ENDPOINTS (and documented in the README's API section).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.errors import VitdemoError

logger = logging.getLogger(__name__)

PUBLIC_ENDPOINTS = ("chat", "attend")  # api_name of each documented endpoint
ATTEND_MAX_NEW_TOKENS = 64  # the Attention tab's default answer length (capped by --max-new-tokens)


def create_attend_endpoint(engine: Engine, settings: Settings) -> None:
    """`/attend`: (image file, question) -> JSON like `python -m vitdemo attend --json`.

    One at a time (the queue's default for model tools), like the Attention tab: it holds
    the model with eager attention, so callers wait in the queue, which tells them their
    place, not on the model lock with a chat slot each."""

    def attend(image: str | None, question: str) -> dict[str, Any]:
        """Answer `question` about `image`; return the answer, its tokens, the image-token
        grid and each answer token's attention map (rows x cols floats) as JSON."""
        from vitdemo.attention.attend import attend_file
        from vitdemo.chat.conversation import GenerationSettings

        gen = GenerationSettings(max_new_tokens=min(ATTEND_MAX_NEW_TOKENS, settings.max_new_tokens))
        try:
            return attend_file(engine, image, question, gen, max_pixels=settings.max_image_pixels)
        except VitdemoError as err:
            raise gr.Error(str(err), print_exception=False) from None

    with gr.Group(visible=False):
        image = gr.File(type="filepath", label="image")
        question = gr.Textbox(label="question")
        result = gr.JSON(label="result")
        button = gr.Button("attend")
    button.click(attend, [image, question], result, api_name="attend")


def restrict_api(demo: gr.Blocks, public: tuple[str, ...] = PUBLIC_ENDPOINTS) -> None:
    """Turn API visibility off for every event of `demo` but the `public` ones (which must exist)."""
    found = set()
    for fn in demo.fns.values():
        if fn.api_name in public:
            found.add(fn.api_name)
            fn.api_visibility = "public"
        else:
            fn.api_visibility = "private"  # the page still calls it; the API does not list it
    missing = set(public) - found
    if missing:
        raise RuntimeError(f"public endpoints {sorted(missing)} are not wired (have {sorted(found)})")
    logger.debug("API: %d public endpoints, %d private events", len(found), len(demo.fns) - len(found))
