"""Learn section 4: base versus fine-tuned, answers and attention maps side by side."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.errors import VitdemoError
from vitdemo.learn.defaults import defaults_for
from vitdemo.ui.choices import dropdown_output

log = logging.getLogger(__name__)
from vitdemo.learn.compare import available_adapters, compare_adapter


def _run(engine: Engine, image_path: str | None, question: str, adapter: str | None, cmap: str,
         allowed: list[str] | None = None):
    from vitdemo.attention.attend import View, render_map
    from vitdemo.core.images import open_image

    # A user's mistake: a warning, and every output keeps what it showed (gr.skip()).
    if not image_path:
        gr.Warning("Pick or upload an image first.")
        return gr.skip()
    if allowed is not None and adapter and adapter not in allowed:  # another user's job, or gone
        gr.Warning("Choose an adapter from the list (press Refresh the list).")
        return gr.skip()
    try:
        image = open_image(image_path)
        result = compare_adapter(engine, image, question, adapter or "")
    except VitdemoError as err:
        log.info("learn comparison refused: %s", err)
        gr.Warning(str(err))
        return gr.skip()
    view = View(cmap=cmap)
    diff = result.difference
    return (result.base_answer, result.tuned_answer,
            render_map(image, result.base_map, result.box, view, "base attention"),
            render_map(image, result.tuned_map, result.box, view, "tuned attention"),
            # Diverging colours centred on 0: white is no change, red more attention, blue less.
            render_map(image, diff, result.box, View(cmap="RdBu_r", centre_zero=True), "tuned - base"))


def create_compare_section(engine: Engine, home: Any, first_image: str | None, settings: Settings | None = None,
                           session: gr.BrowserState | None = None,
                           opened_by: tuple[gr.Radio, str] | None = None) -> None:
    """`session` (vitdemo.ui.identity) picks whose jobs are listed; without it, examples and shared jobs.

    `opened_by`: (the section selector, this section's name): opening the section lists the
    adapters again, so jobs finished since the page was built show up.
    """
    from vitdemo.ui import identity
    from vitdemo.ui.components import image_input

    def owner_of(token: Any, request: gr.Request | None) -> Any:
        try:
            return identity.owner(settings, token, request) if settings is not None else None
        except VitdemoError:
            return None  # the page has no token yet: examples and shared jobs only

    def adapters(token: Any = None, request: gr.Request | None = None) -> list[tuple[str, str]]:
        return available_adapters(home, owner_of(token, request))

    with gr.Row():
        image = image_input(first_image)
        with gr.Column():
            # A question the default image answers (it has no circle), for the shipped adapter.
            question = gr.Textbox(value=f"{defaults_for(first_image).question} Answer in Chinese.", label="Question")
            choices = adapters()
            adapter = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None,
                                  label="Fine-tuned adapter (shipped examples and your finished jobs)",
                                  elem_id="learn-compare-adapter")
            refresh = gr.Button("Refresh the list", size="sm")
            cmap = gr.Dropdown(["jet", "viridis", "inferno", "magma"], value="jet", label="Colormap")
            run = gr.Button("Compare", variant="primary", elem_id="learn-compare-run")
    with gr.Row():
        base_answer = gr.Textbox(label="Base model answers")
        tuned_answer = gr.Textbox(label="Fine-tuned model answers")
    with gr.Row():
        base_map = gr.Image(label="Base: where the first answer word looked", type="pil")
        tuned_map = gr.Image(label="Fine-tuned: where it looked", type="pil")
        diff_map = gr.Image(label="Difference (red: more, blue: less)", type="pil", elem_id="learn-compare-diff")
    mine = [session] if session is not None else []

    shown = gr.State(tuple(choices))  # the adapter choices this page shows

    def on_refresh(current: Any, shown_now: Any, token: Any = None, request: gr.Request = None) -> tuple[Any, Any]:
        """The adapter list now; new choices go out only when they changed (else a plain value)."""
        fresh = adapters(token, request)
        folders = [folder for _, folder in fresh]
        return dropdown_output(shown_now, fresh, current if current in folders else (folders[0] if folders else None))

    def on_open(section_name: str, current: Any, shown_now: Any, token: Any = None,
                request: gr.Request = None) -> tuple[Any, Any]:
        if opened_by is None or section_name != opened_by[1]:
            return current, shown_now  # another section: nothing changes
        return on_refresh(current, shown_now, token, request)

    def on_run(image_path: Any, q: str, chosen: Any, colors: str, token: Any = None, request: gr.Request = None):
        allowed = [folder for _, folder in adapters(token, request)]
        return _run(engine, image_path, q, chosen, colors, allowed)

    refresh.click(on_refresh, [adapter, shown] + mine, [adapter, shown])
    if opened_by is not None:
        opened_by[0].change(on_open, [opened_by[0], adapter, shown] + mine, [adapter, shown])
    run.click(on_run, [image, question, adapter, cmap] + mine,
              [base_answer, tuned_answer, base_map, tuned_map, diff_map])
