"""Learn tab: visual instruction tuning explained, one section per screen, on the live model.

Wiring only: every number comes from vitdemo.learn (no gradio there).
"""

from __future__ import annotations

import contextlib
import json
import zlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np

from vitdemo import learn
from vitdemo.errors import VitdemoError
from vitdemo.learn import fewshot, stages
from vitdemo.learn.defaults import defaults_for
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.paths import EXAMPLES_DIR
from vitdemo.ui.choices import dropdown_output
from vitdemo.ui.components import image_input

# vitdemo.learn.inside, vitdemo.classroom.zero_shot (torch) and .plots (matplotlib) are imported in the
# handlers: building the page must not wait for them (the startup benchmark counts it).

log = logging.getLogger(__name__)

SECTIONS = (
    "1. Transformer inside",
    "2. Seeing and reading together",
    "3. Stages of visual instruction tuning",
    "4. Before and after fine-tuning",
    "5. Zero-shot and few-shot",
)

# Presentation mode: big type, and arrow keys / PageUp / PageDown step through the sections.
PRESENT_JS = """
(on) => {
  document.body.classList.toggle('vitdemo-present', on);
  if (!document.getElementById('vitdemo-present-style')) {
    const style = document.createElement('style');
    style.id = 'vitdemo-present-style';
    style.textContent = `body.vitdemo-present #learn-tab { font-size: 1.45em; }
      body.vitdemo-present #learn-tab .prose, body.vitdemo-present #learn-tab .prose * { font-size: 1.35rem !important; line-height: 1.5; }
      body.vitdemo-present #learn-tab button { font-size: 1.2rem; }`;
    document.head.appendChild(style);
  }
  if (!window.vitdemoKeys) {
    window.vitdemoKeys = true;
    document.addEventListener('keydown', (e) => {
      if (!document.body.classList.contains('vitdemo-present')) return;
      const tag = (e.target.tagName || '').toLowerCase();
      if (tag === 'input' || tag === 'textarea') return;
      const id = (e.key === 'ArrowRight' || e.key === 'PageDown') ? 'learn-next'
               : (e.key === 'ArrowLeft' || e.key === 'PageUp') ? 'learn-prev' : null;
      if (id) { document.getElementById(id)?.click(); e.preventDefault(); }
    });
  }
  return on;
}
"""


@contextlib.contextmanager
def _section(columns: list, visible: bool, intro: str) -> Iterator[None]:
    """One screen of the tab: a column shown alone, opening with its title and intro."""
    with gr.Column(visible=visible) as column:
        columns.append(column)
        gr.Markdown(intro)
        yield


def _example_paths(engine: Engine) -> list[str]:
    folder = Path(str(engine.source)) / "examples"
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not paths:
        paths = sorted(EXAMPLES_DIR.glob("*.png"))
    return [str(p) for p in paths]


def _open(path: str | None):
    from vitdemo.core.images import open_image

    if not path:
        raise gr.Error("Pick or upload an image first.")
    try:
        return open_image(path)
    except VitdemoError as err:
        raise gr.Error(str(err)) from err


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A section's handler: a user's mistake (a bad file, an empty question) becomes a warning
    and every output keeps what it showed (gr.skip()); gr.Error covered them all with "Error"."""
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except (VitdemoError, gr.Error) as err:
            message = getattr(err, "message", None) or str(err)
            log.info("learn section refused: %s", message)
            gr.Warning(message)
            return gr.skip()
    run.__name__ = run.__qualname__ = getattr(fn, "__name__", "run")  # the event's api name stays the handler's
    return run


def _example_at(examples: list[str], example: Any) -> str | None:
    """The image file of section 3's example `example` (its table is about this picture)."""
    index = int(example or 0)
    return examples[index] if 0 <= index < len(examples) else None


def _prompt_inputs(engine: Engine, image, question: str) -> dict:
    from vitdemo.chat import conversation

    conv = [conversation.user_message(question, n_images=1)]
    return dict(conversation.build_inputs(engine.processor, conv, [image]))


def _clip(text: str, limit: int = 70) -> str:
    """Untrained stages babble; keep the table readable."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(values: list[float], n: int = 8) -> str:
    shown = ", ".join(f"{v:+.2f}" for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}]"


# --- section logic (thin: gather, call vitdemo.learn, format) ---------------------------

def _inside(engine: Engine, image_path: str, question: str, layer: int, head: int, query: int | None,
            shown: Any = None):
    """Section 1's outputs; `shown`: the query choices the page shows (new ones are sent only on change)."""
    from vitdemo.learn import inside, plots
    image = _open(image_path)
    if not question.strip():
        raise gr.Error("Type a question first.")
    try:
        with engine.locked() as model:
            walk = inside.walk_through_head(model, engine.processor, _prompt_inputs(engine, image, question),
                                            int(layer), int(head))
    except VitdemoError as err:
        raise gr.Error(str(err)) from err
    T = len(walk.tokens)
    query = T - 1 if query is None or not 0 <= int(query) < T else int(query)
    view = inside.query_view(walk, query)
    d_k = walk.q.shape[1]
    key_table = [[k, repr(walk.tokens[k]), _fmt(kr, 4), round(s, 3), round(w, 3), _fmt(vr, 4)]
                 for k, kr, s, w, vr in zip(view.keys, view.key_rows, view.scores, view.weights, view.value_rows)]
    text_queries = [i for i, t in enumerate(walk.tokens) if t != "<image>"][-6:]
    picture = plots.attention_rows(walk, text_queries, sorted(set(view.keys) | set(text_queries)))
    md = (
        f"**Layer {walk.layer}, head {walk.head} of {walk.n_heads}**, d_k = {d_k}, {T} tokens "
        f"(image tokens included).\n\n"
        f"Query token **{walk.tokens[query]!r}** (position {query}): q = {_fmt(view.q_row)}\n\n"
        f"1. score(q, k) = q · k / sqrt({d_k}) for every earlier token (later ones are masked: causal).\n"
        f"2. softmax turns scores into weights that sum to 1: the top {len(view.keys)} keys below take "
        f"{sum(view.weights):.1%}, the other {T - len(view.keys)} tokens {view.rest_weight:.1%}.\n"
        f"3. the head's output is the weighted sum of the values: {_fmt(view.output)}\n"
        f"4. all {walk.n_heads} heads' outputs are concatenated ({walk.n_heads} x {d_k} = "
        f"{walk.n_heads * d_k}) and multiplied by W^O ({walk.w_o_shape[0]} x {walk.w_o_shape[1]}).\n\n"
        f"**Check:** recomputed from these Q, K, V, the head's output differs from what the model "
        f"passed to W^O by at most **{walk.max_abs_difference:.1e}**: these are the model's own numbers."
    )
    mlp = walk.mlp
    if mlp:
        md += (f"\n\n**Feed-forward block** at the last token: {mlp['hidden']} numbers in, "
               f"{mlp['intermediate']} hidden units (SwiGLU), {mlp['hidden']} out; input norm "
               f"{mlp['input_norm']:.2f}, output norm {mlp['output_norm']:.2f}; strongest units "
               f"{', '.join(f'#{u} ({v:+.2f})' for u, v in zip(mlp['top_units'][:5], mlp['top_values'][:5]))}.")
    choices = [(f"{i}: {t!r}", i) for i, t in enumerate(walk.tokens) if t != "<image>" or i == query]
    selector, shown = dropdown_output(shown, choices, query)
    return md, picture, key_table, selector, shown


def _contrastive(engine: Engine, image_path: str, captions_text: str):
    from vitdemo.learn import plots
    from vitdemo.classroom.zero_shot import match_captions

    image = _open(image_path)
    captions = [c.strip() for c in captions_text.splitlines() if c.strip()]
    if len(captions) < 2:
        raise gr.Error("Give at least two captions, one per line, so the model has a choice.")
    try:
        folder = learn.classroom_folder(engine)
        match = match_captions(learn.contrastive_model(folder), engine.processor, [image], captions[:12])
    except VitdemoError as err:
        raise gr.Error(str(err)) from err
    picked = match.captions[match.picked[0]]
    md = (f"The encoders pick **{picked}** (probability {match.probs[0][match.picked[0]]:.2f}). "
          f"Each caption's score is the cosine similarity of the image and text embeddings divided by "
          f"the learned temperature tau = {match.temperature:.3f}, then a softmax over the captions.")
    return md, plots.caption_similarity(match)


def _suggest_captions(engine: Engine, image_path: str) -> str:
    from vitdemo.chat import conversation
    from vitdemo.classroom import scenes

    image = _open(image_path)
    try:
        described = conversation.answer(engine, [conversation.user_message("Describe the image.", n_images=1)], [image])
    except VitdemoError as err:
        raise gr.Error(str(err)) from err
    rng = np.random.default_rng(zlib.crc32(described.encode()))  # same image, same suggestions
    others = [scenes.describe(scenes.generate_scene(rng, size=24, style=scenes.SceneStyle(supersample=1)))
              for _ in range(4)]
    return "\n".join([c for c in (described, *others) if c.strip()])


def _stage_view(engine: Engine, example: int):
    from vitdemo.learn import plots
    try:
        records = stages.load_stages(learn.classroom_folder(engine))
    except VitdemoError as err:
        raise gr.Error(str(err)) from err
    notes = "\n".join(f"{i}. **{r.name}** ({r.seconds / 60:.1f} min): {r.note}" for i, r in enumerate(records, 1))
    rows = [[r.name, a["question"], a["expected"], _clip(stages.readable_answer(a["answer"])), "yes" if a["answer"] == a["expected"] else "no"]
            for r in records for a in r.answers_after if a["example"] == int(example)]
    return notes, plots.loss_curves(records), rows


def _shots(engine: Engine, image_path: str, question: str, examples_text: str):
    image = _open(image_path)
    try:
        result = fewshot.compare_shots(engine, image, question, fewshot.parse_examples(examples_text))
    except VitdemoError as err:
        raise gr.Error(str(err)) from err
    note = ("The examples changed the answer." if result.zero_shot != result.few_shot else
            "The examples did not change the answer: a model this small learned fixed question forms and "
            "barely learns from examples in its prompt. Fine-tuning (section 4) is how it learns new things.")
    return result.zero_shot, result.few_shot, note


# --- layout and wiring ------------------------------------------------------------------

def create_learn_tab(engine: Engine, settings: Settings | None = None, session: gr.BrowserState | None = None) -> None:
    examples = _example_paths(engine)
    first = examples[0] if examples else None
    defaults = defaults_for(first)  # questions that agree with the default image
    n_layers, n_heads = learn.decoder_layers_and_heads(engine)

    with gr.Column(elem_id="learn-tab"):
        with gr.Row():
            prev_btn = gr.Button("< Previous", elem_id="learn-prev", scale=0)
            section = gr.Radio(list(SECTIONS), value=SECTIONS[0], show_label=False, scale=4)
            next_btn = gr.Button("Next >", elem_id="learn-next", scale=0)
            present = gr.Checkbox(label="Presentation mode (big type, arrow keys)", value=False, scale=1)
        columns = []

        with _section(columns, True, "### 1. Transformer inside\nPick an image, a question, a layer and a head of the "
                        "language model: see the queries, keys and values it really computed, the scores, "
                        "the softmax and the weighted sum."):
            with gr.Row():
                in_image = image_input(first)
                with gr.Column():
                    in_question = gr.Textbox(value=defaults.question, label="Question")
                    in_layer = gr.Slider(0, n_layers - 1, value=n_layers - 1, step=1, label="Layer")
                    in_head = gr.Slider(0, n_heads - 1, value=0, step=1, label="Head")
                    in_query = gr.Dropdown(choices=[], value=None, label="Query token (default: the last)",
                                           allow_custom_value=False)
                    in_run = gr.Button("Open the head", variant="primary")
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[in_image], label="Example images")
            in_md = gr.Markdown()
            with gr.Row():
                in_plot = gr.Image(label="Softmax weights: question tokens (rows) over keys", type="pil")
                in_keys = gr.Dataframe(headers=["position", "key token", "k", "score", "weight", "v"],
                                       label="Strongest keys of the query token", wrap=True)
            in_shown = gr.State(None)  # the query choices this page shows

            def on_inside(*args: Any):
                return _inside(engine, *args)

            run_inside = dict(fn=_guarded(on_inside),
                              inputs=[in_image, in_question, in_layer, in_head, in_query, in_shown],
                              outputs=[in_md, in_plot, in_keys, in_query, in_shown])
            in_run.click(**run_inside)
            in_query.select(**run_inside)

        with _section(columns, False, "### 2. Seeing and reading together (contrastive pretraining)\nAn image encoder and a "
                        "text encoder were trained so that a scene and its caption land close together "
                        "(and, so that every part of the picture learns what it shows, each object's patches "
                        "close to its name: \"a red circle\"). "
                        "With no question-answer training at all, they can already pick the right caption."):
            with gr.Row():
                ct_image = image_input(first)
                with gr.Column():
                    ct_captions = gr.Textbox(lines=5, label="Captions, one per line")
                    with gr.Row():
                        ct_suggest = gr.Button("Suggest captions")
                        ct_run = gr.Button("Match", variant="primary")
            ct_md = gr.Markdown()
            ct_plot = gr.Image(label="Which caption fits?", type="pil")
            ct_suggest.click(_guarded(lambda p: _suggest_captions(engine, p)), [ct_image], [ct_captions])
            ct_run.click(_guarded(lambda p, c: _contrastive(engine, p, c)), [ct_image, ct_captions], [ct_md, ct_plot])

        with _section(columns, False, "### 3. Stages of visual instruction tuning\nThe classroom model was built in the "
                        "four stages of visual instruction tuning, then a last stage on pictures as people make them. "
                        "The curves are its real training losses; the table shows what it answered after each stage."):
            with gr.Row():
                st_example = gr.Dropdown(choices=[(f"Example {i + 1}", i) for i in range(len(examples))]
                                         or [("Example 1", 0)], value=0, label="Example image", scale=3)
                st_show = gr.Button("Show the stages", variant="primary", scale=1)
            st_notes = gr.Markdown()
            with gr.Row():
                # The picture the table's questions are about.
                st_image = gr.Image(value=first, type="filepath", label="The example image", interactive=False,
                                    height=220, scale=1, elem_id="learn-stages-image")
                st_plot = gr.Image(label="Training loss per stage", type="pil", scale=3)
            st_table = gr.Dataframe(headers=["after stage", "question", "expected", "answer", "right"],
                                    label="Answers after each stage", wrap=True,
                                    elem_id="learn-stages-table")
            stage_view = _guarded(lambda e: (*_stage_view(engine, e), _example_at(examples, e)))
            st_show.click(stage_view, [st_example], [st_notes, st_plot, st_table, st_image])
            st_example.change(stage_view, [st_example], [st_notes, st_plot, st_table, st_image])

        with _section(columns, False, "### 4. Before and after fine-tuning\nThe same question to the base model and to a "
                        "fine-tuned adapter, and how the attention map moved."):
            from vitdemo.ui import learn_compare

            learn_compare.create_compare_section(engine, getattr(settings, "home", None), first, settings, session,
                                                 opened_by=(section, SECTIONS[3]))

        with _section(columns, False, "### 5. Zero-shot and few-shot\nAsk something phrased in a way the model never saw, "
                        "alone (zero-shot) and after a few worked examples in the conversation (few-shot)."):
            with gr.Row():
                fs_image = image_input(first)
                with gr.Column():
                    fs_question = gr.Textbox(value=defaults.fewshot_question, label="Question")
                    # Worked examples that are true of the default image.
                    fs_examples = gr.Textbox(lines=3, label="Worked examples (question => answer)",
                                             value=defaults.fewshot_text)
                    fs_run = gr.Button("Compare", variant="primary", elem_id="learn-fewshot-run")
            with gr.Row():
                fs_zero = gr.Textbox(label="Zero-shot answer")
                fs_few = gr.Textbox(label="Few-shot answer")
            fs_note = gr.Markdown()
            fs_run.click(_guarded(lambda *a: _shots(engine, *a)), [fs_image, fs_question, fs_examples],
                         [fs_zero, fs_few, fs_note])

    def show(name: str):
        return [gr.update(visible=(name == s)) for s in SECTIONS]

    section.change(show, [section], columns)
    # Stepping runs in the browser: fast key presses never race on a stale section value.
    names = json.dumps(list(SECTIONS))
    step_js = "(s) => {{ const n = {names}; return n[(n.indexOf(s) + {delta} + n.length) % n.length]; }}"
    prev_btn.click(None, [section], [section], js=step_js.format(names=names, delta=-1))
    next_btn.click(None, [section], [section], js=step_js.format(names=names, delta=1))
    present.change(None, [present], [present], js=PRESENT_JS)
