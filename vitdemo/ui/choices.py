"""Dropdown choices sent only when they change.

Gradio 6 keeps one more copy of a component in the session for every gr.update(...) an
event returns (docs/reliability.md), so a handler that runs on every request sends new
choices only when they differ from what this page already shows, and a plain value
otherwise. The choices a page shows are kept per session in a gr.State.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import gradio as gr


def dropdown_output(shown: Hashable | None, choices: Sequence[Any], value: Any) -> tuple[Any, Hashable]:
    """(what to send to the Dropdown, the choices the page shows afterwards).

    `shown`: the choices this page shows now (as returned last time; None at first).
    """
    key = tuple(choices)
    if key == shown:
        return value, shown
    return gr.update(choices=list(choices), value=value), key
