"""The "How it sees" tab: ask about an image and watch where each word looks.

Wiring only: the logic is in vitdemo.attention.attend (answer with maps) and
vitdemo.attention.view (what to draw for a selection).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from vitdemo.attention import view as av
from vitdemo.attention.attend import View, stream_with_maps
from vitdemo.core.images import open_image
from vitdemo.errors import InputError, VitdemoError
from vitdemo.attention.heatmaps import COLORMAPS, DEFAULT_COLORMAP
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.core.images import DEFAULT_MAX_PIXELS
from vitdemo.ui import adapter_choice
from vitdemo.ui.attention_checks import create_causal_checks
from vitdemo.ui.image_path import ImagePath

log = logging.getLogger(__name__)

SPAN_COLORS = {"selected": "#ff9f1c"}


def create_attention_tab(engine: Engine, settings: Settings | None = None, adapter_state: gr.State | None = None) -> dict[str, Any]:
    """Build the tab's components inside the current Blocks context; returns them by name."""
    max_new_default = min(64, int(getattr(settings, "max_new_tokens", 64) or 64))
    max_pixels = int(getattr(settings, "max_image_pixels", DEFAULT_MAX_PIXELS) or DEFAULT_MAX_PIXELS)
    session = gr.State(av.AttentionSession())
    stop_signal = gr.State(av.StopSignal())  # this user's Stop button
    gr.Markdown("Ask about an image. Each word's attention map appears as it is written; "
                "click any word of the answer or the question to see where it looked.")
    with gr.Row():
        with gr.Column(scale=1):
            # The path, undecoded: vitdemo.core.images.open_image checks the file and the pixel limit first.
            image = ImagePath(type="filepath", label="Image", elem_id="attn-image", height=260)
            image2 = ImagePath(type="filepath", label="Second image (optional)", elem_id="attn-image2", height=120)
            question = gr.Textbox(label="Question", placeholder="What colour is the circle?",
                                  elem_id="attn-question")
            with gr.Row():
                ask = gr.Button("Ask", variant="primary", elem_id="attn-ask")
                stop = gr.Button("Stop", elem_id="attn-stop")
            max_new = gr.Slider(1, 256, value=max_new_default, step=1, label="Max new tokens")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="attn-status")
            answer = gr.HighlightedText(label="Answer (click a word)", color_map=SPAN_COLORS,
                                        show_inline_category=False, elem_id="attn-answer")
            prompt = gr.HighlightedText(label="Question tokens (click a word)", color_map=SPAN_COLORS,
                                        show_inline_category=False, elem_id="attn-prompt")
            caption = gr.Markdown(elem_id="attn-caption")
            overlay = gr.Image(label="Where it looked", type="pil", interactive=False, elem_id="attn-overlay",
                               height=360)
    with gr.Row():
        layer = gr.Dropdown([av.MIDDLE_LAYERS], value=av.MIDDLE_LAYERS, label="Layer (default: middle layers)")
        head = gr.Dropdown([av.ALL_HEADS], value=av.ALL_HEADS, label="Head")
        which = gr.Dropdown(["image 1"], value="image 1", label="Image")
        cmap = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap")
        opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity")
        smooth = gr.Checkbox(False, label="Smooth")
    with gr.Accordion("All heads of the selected layer", open=False):
        heads_img = gr.Image(type="pil", interactive=False, show_label=False)
    with gr.Accordion("Image attention share (layer x head): click a cell", open=False):
        share_img = gr.Image(type="pil", interactive=False, show_label=False, elem_id="attn-share")
    with gr.Accordion("Vision encoder: attention and rollout", open=False):
        with gr.Row():
            v_mode = gr.Radio(["attention", "rollout"], value="rollout", label="View")
            v_query = gr.Radio(["cls", "mean"], value="cls", label="Query")
            v_layer = gr.Dropdown([av.ALL_LAYERS], value=av.ALL_LAYERS, label="Encoder layer")
            v_head = gr.Dropdown([av.ALL_HEADS], value=av.ALL_HEADS, label="Encoder head")
        vision_img = gr.Image(type="pil", interactive=False, show_label=False)
    with gr.Accordion("Download maps (PNG, .npz, JSON)", open=False):
        prepare = gr.Button("Prepare files")
        files = gr.File(file_count="multiple", interactive=False)

    def _view(cmap_v: str, opacity_v: float, smooth_v: bool) -> View:
        return View(cmap=cmap_v, opacity=float(opacity_v), smooth=bool(smooth_v), min_side=384)

    def _image_index(choice: str | None) -> int:
        return max(0, int(choice.split()[-1]) - 1) if choice else 0

    def _safe(fn, *args, default=None):
        try:
            return fn(*args)
        except VitdemoError as err:
            log.info("attention view: %s", err)
            return default

    def _main(s: av.AttentionSession, layer_v, head_v, which_v, cmap_v, opacity_v, smooth_v):
        view = _view(cmap_v, opacity_v, smooth_v)
        pic = _safe(av.token_picture, s, layer_v, head_v, _image_index(which_v), view)
        text = _safe(av.token_caption, s, layer_v, head_v, default="")
        return pic, text

    def _extras(s, layer_v, which_v, cmap_v, opacity_v, smooth_v, v_mode_v, v_layer_v, v_head_v, v_query_v):
        view = _view(cmap_v, opacity_v, smooth_v)
        idx = _image_index(which_v)
        heads_pic = _safe(av.heads_picture, s, layer_v, idx, view)
        share = _safe(av.share_picture, s)
        vision = _safe(av.vision_picture, s, v_mode_v, v_layer_v, v_head_v, v_query_v, idx, view)
        return heads_pic, None if share is None else share[0], vision

    def _spans(s: av.AttentionSession):
        r = s.result
        if r is None:
            return None, None
        return (av.token_spans(r.answer_tokens, s.index if s.kind == "answer" else None),
                av.token_spans(r.prompt_tokens, s.index if s.kind == "prompt" else None))

    adapter_state = adapter_state if adapter_state is not None else adapter_choice.new_state()
    checks = create_causal_checks(engine, session, adapter_state)
    refresh_checks, refresh_in, refresh_out = checks["refresh"]

    def on_ask(img, img2, q, max_new_v, layer_v, head_v, which_v, cmap_v, opacity_v, smooth_v, adapter,
               prev: av.AttentionSession | None, signal: av.StopSignal):
        # A user's mistake is a warning toast and one gr.skip(): every output keeps what it
        # showed (gr.Error would cover them all with "Error"; yielding nothing empties them).
        # Only mistakes skip, so the per-update component copy stays off the normal path.
        from vitdemo.chat.conversation import GenerationSettings, user_message

        signal.event.clear()
        images = [i for i in (img, img2) if i]
        try:
            if not images:
                raise InputError("Upload an image first.")
            if not (q or "").strip():
                raise InputError("Type a question.")
            opened = [open_image(i, max_pixels=max_pixels) for i in images]
        except VitdemoError as err:
            log.info("attention request refused: %s", err)
            gr.Warning(str(err))
            yield gr.skip()
            return
        s = av.AttentionSession(images=opened, question=q.strip(), choices_key=getattr(prev, "choices_key", None),
                                vision_key=getattr(prev, "vision_key", None))
        conversation = [user_message(q, len(images))]
        gen = GenerationSettings(max_new_tokens=int(max_new_v))
        # Each update is sent when the next word arrives, the last one with "Done": so the
        # last picture is sent once (sending the same image twice makes Gradio rewrite its
        # cached file while the browser may be reading it). The dropdowns get plain values:
        # a gr.update() per answer made Gradio keep one more component copy per session.
        pending = None
        failed = None
        try:
            for event in stream_with_maps(engine, conversation, s.images, gen,
                                          stop_event=signal.event, adapter=adapter_choice.adapter_arg(adapter)):
                s.result, s.notice, s.kind, s.index = event.result, event.notice, "answer", -1
                if pending is not None:
                    yield (*pending, layer_v, head_v, which_v)
                if event.result is None:
                    pending = (s, f"**No attention maps:** {event.notice}", [(event.text, None)], None, None, "")
                else:
                    pic, text = _main(s, layer_v, head_v, which_v, cmap_v, opacity_v, smooth_v)
                    pending = (s, "Answering…", *_spans(s), pic, text)
        except VitdemoError as err:
            log.info("attention answer refused or failed: %s", err)
            gr.Warning(str(err))
            if pending is None:  # refused before any word (too long...): the page keeps what it showed
                yield gr.skip()
                return
            failed = str(err)
        r = s.result
        if pending is None:
            return
        if r is None:  # no maps (unsupported model): nothing to choose from
            yield (*pending, layer_v, head_v, which_v)
            return
        n_words = len(r.answer_tokens)
        if failed:
            done = f"Stopped after {n_words} tokens: {failed}"
        elif signal.event.is_set():
            done = f"Stopped after {n_words} tokens. Click a word to see its map."
        else:
            done = "Done. Click a word to see its map."
        done += f" ({r.vision_error})" if r.vision_error else ""
        selectors = av.answer_selectors(s, layer_v, head_v, which_v)
        yield (s, done, *pending[2:], *_selectors(s, "choices_key", selectors))

    def _selectors(s: av.AttentionSession, shown: str, selectors: list[av.Selector]) -> tuple:
        """Dropdown outputs: new choices only when they differ from what this session's page
        shows (attribute `shown` of the session), plain values otherwise."""
        key = tuple(tuple(choices) for choices, _ in selectors)
        if getattr(s, shown) == key:
            return tuple(value for _, value in selectors)
        setattr(s, shown, key)
        return tuple(gr.update(choices=choices, value=value) for choices, value in selectors)

    def on_select(kind: str):
        def handler(s: av.AttentionSession, layer_v, head_v, which_v, cmap_v, opacity_v, smooth_v,
                    evt: gr.SelectData):
            s.kind, s.index = kind, int(evt.index)  # type: ignore[assignment]
            ans, prm = _spans(s)
            pic, text = _main(s, layer_v, head_v, which_v, cmap_v, opacity_v, smooth_v)
            return s, ans, prm, pic, text
        return handler

    def on_share_click(s: av.AttentionSession, which_v, cmap_v, opacity_v, smooth_v, evt: gr.SelectData):
        x, y = evt.index
        hit = _safe(av.share_click, s, x, y)
        if hit is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        pic, text = _main(s, hit[0], hit[1], which_v, cmap_v, opacity_v, smooth_v)
        return hit[0], hit[1], pic, text

    def on_vision_choices(s: av.AttentionSession):
        return _selectors(s, "vision_key", av.vision_selectors(s))

    def on_prepare(s, layer_v, head_v, cmap_v, opacity_v, smooth_v):
        # The files follow the layer, head and drawing options chosen on screen.
        try:
            return av.downloads(s, _view(cmap_v, opacity_v, smooth_v), layer=layer_v, head=head_v)
        except VitdemoError as err:
            log.info("attention downloads refused: %s", err)
            gr.Warning(str(err))
            return None

    controls = [layer, head, which, cmap, opacity, smooth]
    extras_in = [session, layer, which, cmap, opacity, smooth, v_mode, v_layer, v_head, v_query]
    extras_out = [heads_img, share_img, vision_img]
    ask_in = [image, image2, question, max_new, *controls, adapter_state, session, stop_signal]
    ask_out = [session, status, answer, prompt, overlay, caption, layer, head, which]
    run = ask.click(on_ask, ask_in, ask_out)
    run.then(on_vision_choices, [session], [v_layer, v_head]).then(_extras, extras_in, extras_out) \
        .then(refresh_checks, refresh_in, refresh_out)
    submitted = question.submit(on_ask, ask_in, ask_out)
    submitted.then(on_vision_choices, [session], [v_layer, v_head]).then(_extras, extras_in, extras_out) \
        .then(refresh_checks, refresh_in, refresh_out)
    # Unqueued, so it acts at once: the answer ends after the current word and the status
    # says "Stopped" (cancelling the event instead left "Answering..." on the page).
    stop.click(lambda signal: signal.event.set(), [stop_signal], None, queue=False)
    answer.select(on_select("answer"), [session, *controls], [session, answer, prompt, overlay, caption]) \
        .then(_extras, extras_in, extras_out)
    prompt.select(on_select("prompt"), [session, *controls], [session, answer, prompt, overlay, caption]) \
        .then(_extras, extras_in, extras_out)
    for control in controls:
        control.change(_main, [session, *controls], [overlay, caption]).then(_extras, extras_in, extras_out)
    for control in (v_mode, v_layer, v_head, v_query):
        control.change(_extras, extras_in, extras_out)
    share_img.select(on_share_click, [session, which, cmap, opacity, smooth], [layer, head, overlay, caption])
    prepare.click(on_prepare, [session, layer, head, cmap, opacity, smooth], [files])
    return {"image": image, "question": question, "ask": ask, "answer": answer, "prompt": prompt,
            "overlay": overlay, "layer": layer, "head": head, "share": share_img, "files": files,
            **{f"checks_{name}": c for name, c in checks.items() if name != "refresh"}}
