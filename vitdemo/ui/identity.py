"""Who this page is, for the jobs it owns: wiring for vitdemo.finetune.owners.

A gr.BrowserState keeps a random session token in the browser's storage (so it survives
a reload there); the first page load writes one. Handlers pass the token and the request
to `owner()`, which prefers the --auth login name.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from vitdemo.config import Settings
from vitdemo.finetune import owners

STORAGE_KEY = "vitdemo-session"  # fixed, so a restarted server finds the same browser's token


def new_state(settings: Settings) -> gr.BrowserState:
    """The token's BrowserState, and a load event of the Blocks being built that fills it."""
    state = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=owners.browser_secret(settings.home))
    blocks = gr.context.Context.root_block
    if blocks is None:
        raise RuntimeError("identity.new_state() must be called inside a gr.Blocks")
    blocks.load(ensure_token, [state], [state], queue=False, show_progress="hidden")
    return state


def ensure_token(token: Any) -> str:
    """The stored token, or a new one when there is none (or it is not one of ours)."""
    return token if owners.valid_token(token) else owners.new_token()


def owner(settings: Settings, token: Any, request: gr.Request | None) -> owners.Owner:
    """The Owner behind a request; InputError when the page has no token yet.

    With personal logins (an --auth file of several users) the login name is the owner and
    the first user is the teacher. One shared login (`--auth class:password`) names nobody
    in particular, so there the browser session owns the jobs."""
    logins = [user for user, _ in settings.auth_pairs]
    username = getattr(request, "username", None) if request is not None else None
    if len(logins) < 2:
        username = None
    return owners.owner_for(token, username, logins[0] if logins else None)

