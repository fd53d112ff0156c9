"""The Chat tab: wiring only. The logic lives in vitdemo.chat.session and vitdemo.chat."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from vitdemo.chat.conversation import GenerationSettings
from vitdemo.config import Settings
from vitdemo.paths import EXAMPLES_DIR
from vitdemo.core.engine import Engine
from vitdemo.errors import InputError, VitdemoError
from vitdemo.chat.session import ChatSession, history_to_session
from vitdemo.ui import adapter_choice

logger = logging.getLogger(__name__)

# Events that run the model share one concurrency group: the model is one resource.
GENERATE_GROUP = "vitdemo-generate"


def load_examples(folder: Path = EXAMPLES_DIR) -> list[dict[str, Any]]:
    """[{"text", "files"}] for gr.Examples, from examples.json (or every PNG with a default question)."""
    index = folder / "examples.json"
    items: list[dict[str, Any]] = []
    if index.is_file():
        for entry in json.loads(index.read_text()):
            path = folder / entry["image"]
            if path.is_file():
                items.append({"text": entry["question"], "files": [str(path)]})
    else:
        items = [{"text": "Describe the image.", "files": [str(p)]} for p in sorted(folder.glob("*.png"))]
    return items


def _gen_settings(max_new_tokens: float, temperature: float, top_p: float, seed: str | float | None,
                  cap: int) -> GenerationSettings:
    text = "" if seed is None else str(seed).strip()
    try:
        seed_value = int(float(text)) if text else None
    except ValueError:
        raise InputError(f"the seed {text[:40]!r} is not a whole number: type one, or leave it empty") from None
    gen = GenerationSettings(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed_value,
    )
    gen.validate(cap=cap)
    return gen


def create_chat_tab(engine: Engine, settings: Settings, adapter_state: gr.State | None = None) -> dict[str, Any]:
    """Build the chat components inside the current gr.Tab and wire their events.

    `adapter_state` (see adapter_choice): this user's adapter, shared with the Fine-tune tab.
    """
    session = gr.State(ChatSession())  # deep-copied per user: each gets their own history
    adapter_state = adapter_state if adapter_state is not None else adapter_choice.new_state()
    answering = gr.Markdown(adapter_choice.describe(adapter_choice.SERVER_DEFAULT, engine)
                            if engine.is_loaded else "", elem_id="vitdemo-answering")
    chatbot = gr.Chatbot(label="Chat", height=460, buttons=["copy"], elem_id="vitdemo-chatbot")
    textbox = gr.MultimodalTextbox(
        file_types=["image"],
        file_count="multiple",
        sources=["upload"],
        placeholder="Ask about an image: drop, paste or upload one or more, then type a question",
        show_label=False,
        elem_id="vitdemo-input",
    )
    with gr.Row():
        # Plain (not the red "stop" variant): a bright red button looked urgent while nothing ran.
        stop_btn = gr.Button("Stop", size="sm", elem_id="vitdemo-stop")
        regen_btn = gr.Button("Regenerate", size="sm", elem_id="vitdemo-regenerate")
        undo_btn = gr.Button("Undo", size="sm", elem_id="vitdemo-undo")
        clear_btn = gr.Button("Clear", size="sm", elem_id="vitdemo-clear")
    with gr.Accordion("Generation settings", open=False):
        max_tokens = gr.Slider(1, settings.max_new_tokens_cap, value=settings.max_new_tokens, step=1,
                               label="Max new tokens")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy, repeatable)")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (used when temperature > 0)")
        # Empty: a fresh seed per answer, so Regenerate samples anew; each sampled answer shows its
        # seed. A textbox, because a gr.Number left empty sends 0 (always the same sample).
        seed = gr.Textbox(value="", label="Seed (for sampling; empty = a new one each time)", max_lines=1,
                          elem_id="vitdemo-seed")
    examples = load_examples()
    if examples:
        gr.Examples(examples=[[e] for e in examples], inputs=[textbox], label="Examples (click one, then send)")
    gen_inputs = [session, max_tokens, temperature, top_p, seed, adapter_state]

    def add_message(message: dict[str, Any] | None, state: ChatSession):
        # Refusals are toasts (gr.Warning), not gr.Error, which would cover the chat with an
        # "Error" overlay; state.busy stays False, so `generate` then does nothing.
        if state.busy:
            gr.Warning("wait for the answer, or press Stop")
            return state, gr.Chatbot(), gr.MultimodalTextbox()
        message = message or {}
        try:
            state.add_user_message(message.get("text", ""), message.get("files") or [],
                                   max_images=settings.max_images_per_message,
                                   max_pixels=settings.max_image_pixels)
        except VitdemoError as err:
            gr.Warning(str(err))
            return state, gr.Chatbot(), gr.MultimodalTextbox()
        state.busy = True
        return state, state.chatbot_messages(), gr.MultimodalTextbox(value=None, interactive=False)

    def generate(state: ChatSession, n: float, temp: float, p: float, s: float | None,
                 adapter: str | None) -> Iterator[Any]:
        if not state.busy:  # the message was refused: nothing to answer
            yield state, gr.Chatbot()
            return
        try:
            gen = _gen_settings(n, temp, p, s, settings.max_new_tokens_cap)
            for _ in state.stream_reply(engine, gen, adapter=adapter_choice.adapter_arg(adapter)):
                yield state, state.chatbot_messages()
        except VitdemoError as err:
            gr.Warning(str(err))
        finally:
            state.busy = False
        yield state, state.chatbot_messages()

    def release(state: ChatSession):
        state.busy = False
        refused, state.refused = state.refused, None
        if refused is not None:  # the refused question goes back into the box, to shorten it
            return gr.MultimodalTextbox(value={"text": refused.text, "files": refused.image_paths},
                                        interactive=True)
        return gr.MultimodalTextbox(interactive=True)

    def prepare_regenerate(state: ChatSession):
        if state.busy:
            gr.Warning("wait for the answer, or press Stop")
            return state, gr.Chatbot(), gr.MultimodalTextbox()
        try:
            state.prepare_regenerate()
        except VitdemoError as err:
            gr.Warning(str(err))
            return state, gr.Chatbot(), gr.MultimodalTextbox()
        state.busy = True
        return state, state.chatbot_messages(), gr.MultimodalTextbox(interactive=False)

    def undo(state: ChatSession):
        if state.busy:
            gr.Warning("wait for the answer, or press Stop")
            return state, state.chatbot_messages(), gr.MultimodalTextbox()
        turn = state.undo()
        value = {"text": turn.text, "files": turn.image_paths} if turn else None
        return state, state.chatbot_messages(), gr.MultimodalTextbox(value=value)

    def clear(state: ChatSession):
        # Leaves the textbox alone: a draft being typed survives, and no race with an upload.
        state.stop()
        state.clear()
        return state, []

    def stop(state: ChatSession) -> None:
        state.stop()

    # Cheap events go through the queue (so warnings reach the page as toasts) with no
    # concurrency limit, so they never wait behind a generation.
    common = dict(api_visibility="private")
    quick = dict(concurrency_limit=None, **common)
    run = dict(concurrency_limit=settings.concurrency, concurrency_id=GENERATE_GROUP, **common)
    added = textbox.submit(add_message, [textbox, session], [session, chatbot, textbox], **quick)
    added.then(generate, gen_inputs, [session, chatbot], **run).then(release, [session], [textbox], **quick)
    regen = regen_btn.click(prepare_regenerate, [session], [session, chatbot, textbox], **quick)
    regen.then(generate, gen_inputs, [session, chatbot], **run).then(release, [session], [textbox], **quick)
    undo_btn.click(undo, [session], [session, chatbot, textbox], **quick)
    clear_btn.click(clear, [session], [session, chatbot], **quick)
    chatbot.clear(clear, [session], [session, chatbot], **quick)  # its trash icon
    # Unqueued: Stop must act at once, even when the queue is full.
    stop_btn.click(stop, [session], None, queue=False, **common)

    adapter_state.change(lambda choice: adapter_choice.describe(choice, engine), [adapter_state], [answering],
                         **quick)
    _api_endpoint(engine, settings)
    return {"chatbot": chatbot, "textbox": textbox, "session": session, "stop": stop_btn,
            "regenerate": regen_btn, "undo": undo_btn, "clear": clear_btn}


def _api_endpoint(engine: Engine, settings: Settings) -> None:
    """`/chat`: (image file, question, optional history) -> answer, for gradio_client."""

    def api_chat(image: str | None, question: str, history: Any = None) -> Iterator[str]:
        """Answer `question` about `image`, streamed (the last value is the whole answer).

        `history`: earlier text messages [{"role": "user"|"assistant", "content": str}].
        """
        try:
            if isinstance(history, str):
                history = json.loads(history) if history.strip() else None
            state = history_to_session(history, image, question,
                                       max_images=settings.max_images_per_message,
                                       max_pixels=settings.max_image_pixels)
            gen = GenerationSettings(max_new_tokens=settings.max_new_tokens)
            answer = ""
            for answer in state.stream_reply(engine, gen):
                yield answer
            if not answer or answer != answer.strip():  # the whole answer, once: each message costs the server
                yield answer.strip()
        except (VitdemoError, json.JSONDecodeError) as err:
            raise gr.Error(str(err), print_exception=False) from None

    with gr.Group(visible=False):
        image = gr.File(type="filepath", label="image")
        question = gr.Textbox(label="question")
        history = gr.JSON(label="history")
        answer = gr.Textbox(label="answer")
        button = gr.Button("api")
    button.click(api_chat, [image, question, history], answer, api_name="chat",
                 concurrency_limit=settings.concurrency, concurrency_id=GENERATE_GROUP)
