"""Which adapter one browser session answers with.

The Fine-tune tab's "Chat with this adapter" sets it; the Chat and Attention tabs pass it
with every request. It lives in a gr.State, so one user's choice never changes the model
another user talks to (the server's default, `--adapter`, stays as it is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from vitdemo.core.engine import KEEP, Engine

SERVER_DEFAULT: str | None = None  # state value: whatever the server was started with
BASE_MODEL = ""  # state value: the base model, no adapter


def new_state() -> gr.State:
    return gr.State(SERVER_DEFAULT)


def adapter_arg(choice: str | None) -> Any:
    """The `adapter=` argument for the engine: KEEP (server default), None (base) or a folder."""
    if choice is SERVER_DEFAULT:
        return KEEP
    return None if choice == BASE_MODEL else choice


def describe(choice: str | None, engine: Engine) -> str:
    """One line for the Chat tab when an adapter answers this user ("" for the base model)."""
    if choice is SERVER_DEFAULT:
        choice = engine.default_adapter or BASE_MODEL
    if choice == BASE_MODEL:
        return ""
    return f"Answering with the fine-tuned adapter **{Path(choice).parent.name or Path(choice).name}** " \
           "(only in this browser; the Fine-tune tab switches back)."
