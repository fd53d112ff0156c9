"""The Attention tab's causal checks: remove a part and ask again; deletion/insertion curves;
the relevancy map; the logit lens.

Wiring only: the logic is in vitdemo.attention.causal_view. Everything works on the user's
last answer (the tab's AttentionSession).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from vitdemo.attention import causal_view as cv
from vitdemo.attention.ablation import DEFAULT_METHOD
from vitdemo.attention.attend import View
from vitdemo.attention.interventions import REGION_METHODS
from vitdemo.core.engine import Engine
from vitdemo.errors import VitdemoError
from vitdemo.ui import adapter_choice

log = logging.getLogger(__name__)

METHOD_HELP = ("**blank**: paint the box with the background colour (default: it changed the classroom "
               "model's answers the way removing the object does); **mean-colour**: paint it with the image's "
               "mean colour; **mask-tokens**: hide the box's image tokens from the language model's attention; "
               "**mean-tokens**: replace them with the mean image token.")


def create_causal_checks(engine: Engine, session: gr.State, adapter_state: gr.State) -> dict[str, Any]:
    """Build the accordions inside the current Blocks context; returns the components by name
    and `refresh`, the function (with inputs and outputs) to call after every answer."""
    clicks = gr.State([])
    with gr.Accordion("Remove a part and ask again (does the answer depend on it?)", open=False,
                      elem_id="abl-accordion"):
        gr.Markdown("Click two opposite corners of a region on the picture (or type a box), then ask again "
                    "without it. Or knock out one layer or one attention head of the language model. "
                    + METHOD_HELP)
        with gr.Row():
            with gr.Column(scale=1):
                pick = gr.Image(type="pil", interactive=False, label="Click two corners", elem_id="abl-pick",
                                height=260)
                box = gr.Textbox(label="Box x0, y0, x1, y1 (pixels of the image)", elem_id="abl-box")
                method = gr.Radio(list(REGION_METHODS), value=DEFAULT_METHOD, label="How to remove the box",
                                  elem_id="abl-method")
                with gr.Row():
                    layer = gr.Dropdown([cv.NO_LAYER], value=cv.NO_LAYER, label="Or knock out a layer",
                                        elem_id="abl-layer")
                    head = gr.Dropdown([cv.ALL_HEADS_OUT], value=cv.ALL_HEADS_OUT, label="Head",
                                       elem_id="abl-head")
                run = gr.Button("Ask again without it", variant="primary", elem_id="abl-run")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="abl-summary")
                with gr.Row():
                    before = gr.Image(type="pil", interactive=False, label="Before: first word's map",
                                      elem_id="abl-before", height=300)
                    after = gr.Image(type="pil", interactive=False, label="After: first word's map",
                                     elem_id="abl-after", height=300)
    with gr.Accordion("Is the map faithful? Deletion and insertion curves for the selected word", open=False,
                      elem_id="faith-accordion"):
        gr.Markdown("The image's cells are painted over in the order each map ranks them (deletion) or given "
                    "back in that order (insertion), following the probability of the selected answer word. "
                    "A faithful map makes it fall fast when deleting and rise fast when inserting; "
                    "random orders are the baseline. Click a word of the answer first (default: the last).")
        draw = gr.Button("Draw the curves", elem_id="faith-run")
        table = gr.Markdown(elem_id="faith-table")
        plot = gr.Image(type="pil", interactive=False, show_label=False, elem_id="faith-plot")

    with gr.Accordion("Relevancy map of the selected word (gradient-weighted attention)", open=False,
                      elem_id="rel-accordion"):
        gr.Markdown("Attention weighted by how much the selected word's score changes with it, summed over "
                    "the layers (Chefer et al. 2021). Click a word of the answer first (default: the last).")
        relevancy_run = gr.Button("Show the relevancy map", elem_id="rel-run")
        relevancy_img = gr.Image(type="pil", interactive=False, show_label=False, elem_id="rel-img", height=360)
    with gr.Accordion("What each layer would say (logit lens)", open=False, elem_id="lens-accordion"):
        gr.Markdown("Each decoder layer's hidden state read through the model's final norm and output layer: "
                    "what it would answer if it stopped there. The table follows the selected answer word; the "
                    "picture writes on each image cell the word its token decodes to at the chosen layer.")
        with gr.Row():
            lens_layer = gr.Dropdown(["embeddings (0)"], value="embeddings (0)", label="Patch words at",
                                     elem_id="lens-layer")
            lens_run = gr.Button("Read the layers", elem_id="lens-run")
        lens_table = gr.Markdown(elem_id="lens-table")
        lens_img = gr.Image(type="pil", interactive=False, show_label=False, elem_id="lens-img")

    def view() -> View:
        return View(min_side=320)

    def refresh(s: cv.AttentionSession):
        layers, heads = cv.knock_out_choices(s)
        lens_layers = cv.lens_choices(s)
        return (cv.picture_with_box(s, ""), "", [], gr.update(choices=layers, value=cv.NO_LAYER),
                gr.update(choices=heads, value=cv.ALL_HEADS_OUT), "", None, None,
                gr.update(choices=lens_layers, value=lens_layers[-1]), "", None, "", None, None)

    def on_click(s: cv.AttentionSession, points: list, evt: gr.SelectData):
        points = [*points, cv.click_to_image(s, evt.index)][-2:]
        text = cv.box_from_clicks(points) if len(points) == 2 else ""
        return points, text, cv.picture_with_box(s, text)

    def on_run(s: cv.AttentionSession, box_v: str, method_v: str, layer_v: str, head_v: str, adapter):
        try:
            return cv.run_ablation(engine, s, box_v, method_v, layer_v, head_v, view(),
                                   adapter_choice.adapter_arg(adapter))
        except VitdemoError as err:  # a user's mistake: a toast, the outputs keep what they showed
            log.info("ablation refused: %s", err)
            gr.Warning(str(err))
            return gr.skip(), gr.skip(), gr.skip()

    def on_draw(s: cv.AttentionSession, adapter):
        try:
            picture, text, _ = cv.faithfulness_curves(engine, s, {"relevancy": cv.relevancy_map_maker},
                                                      adapter=adapter_choice.adapter_arg(adapter))
            return text, picture
        except VitdemoError as err:
            log.info("faithfulness curves refused: %s", err)
            gr.Warning(str(err))
            return gr.skip(), gr.skip()

    def on_relevancy(s: cv.AttentionSession, adapter):
        try:
            return cv.relevancy_picture(engine, s, view(), adapter_choice.adapter_arg(adapter))
        except VitdemoError as err:
            log.info("relevancy refused: %s", err)
            gr.Warning(str(err))
            return gr.skip()

    def on_lens(s: cv.AttentionSession, layer_v: str, adapter):
        try:
            return cv.lens_view(engine, s, layer_v, adapter_choice.adapter_arg(adapter))
        except VitdemoError as err:
            log.info("logit lens refused: %s", err)
            gr.Warning(str(err))
            return gr.skip(), gr.skip()

    pick.select(on_click, [session, clicks], [clicks, box, pick])
    box.blur(lambda s, text: cv.picture_with_box(s, text), [session, box], [pick])
    run.click(on_run, [session, box, method, layer, head, adapter_state], [summary, before, after])
    draw.click(on_draw, [session, adapter_state], [table, plot])
    relevancy_run.click(on_relevancy, [session, adapter_state], [relevancy_img])
    lens_run.click(on_lens, [session, lens_layer, adapter_state], [lens_table, lens_img])
    lens_layer.change(on_lens, [session, lens_layer, adapter_state], [lens_table, lens_img])
    return {"pick": pick, "box": box, "method": method, "run": run, "summary": summary, "before": before,
            "after": after, "draw": draw, "plot": plot, "table": table,
            "relevancy_run": relevancy_run, "relevancy_img": relevancy_img, "lens_layer": lens_layer,
            "lens_run": lens_run, "lens_table": lens_table, "lens_img": lens_img,
            "refresh": (refresh, [session], [pick, box, clicks, layer, head, summary, before, after, lens_layer,
                                             lens_table, lens_img, table, plot, relevancy_img])}
