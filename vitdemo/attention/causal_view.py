"""What the Attention tab's causal checks show, as plain functions (no gradio).

Each works on the user's last answer (`view.AttentionSession`): remove a region, a layer or
a head and ask again (`ablation`); deletion and insertion curves of the selected word's
maps (`faithfulness`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vitdemo.attention import faithfulness
from vitdemo.attention.ablation import AblationOutcome, ablate
from vitdemo.attention.attend import View, render_map
from vitdemo.attention.view import AttentionSession, parse_choice
from vitdemo.core.engine import KEEP, Engine
from vitdemo.errors import InputError

log = logging.getLogger(__name__)


def parse_box_text(text: str | None) -> tuple[float, float, float, float] | None:
    """'x0, y0, x1, y1' -> four numbers; empty -> None. InputError names what is wrong."""
    if not (text or "").strip():
        return None
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]  # type: ignore[union-attr]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"the box {text!r} is not four numbers x0, y0, x1, y1 (pixels)") from None
    if len(values) != 4:
        raise InputError(f"the box needs four numbers x0, y0, x1, y1 (pixels); {text!r} has {len(values)}")
    return values[0], values[1], values[2], values[3]


def box_from_clicks(clicks: Sequence[tuple[float, float]]) -> str:
    """Two clicks (any two opposite corners, original-image pixels) -> 'x0, y0, x1, y1' for the box field."""
    (ax, ay), (bx, by) = clicks[-2], clicks[-1]
    return f"{round(min(ax, bx))}, {round(min(ay, by))}, {round(max(ax, bx))}, {round(max(ay, by))}"


# The picture to click on is sent at least this large: the browser reads a click's pixel
# from the picture's own size only when it is shown at or below that size (Gradio 6.31
# maps clicks wrongly on a picture stretched larger than it is).
PICK_MIN_SIDE = 640


def pick_scale(session: AttentionSession) -> float:
    """How much larger than the asked image the picture to click on is drawn."""
    if not session.images:
        return 1.0
    return max(1.0, PICK_MIN_SIDE / max(session.images[0].size))


def click_to_image(session: AttentionSession, index: Sequence[float]) -> tuple[float, float]:
    """A click on the picture (its pixels) -> pixels of the asked image."""
    scale = pick_scale(session)
    return float(index[0]) / scale, float(index[1]) / scale


def _session_image(session: AttentionSession) -> tuple[Image.Image, str]:
    if session.result is None or not session.images or not session.question:
        raise InputError("ask a question with the Ask button first: the checks work on its answer")
    if len(session.images) > 1:
        raise InputError("the causal checks work on one image: ask again without the second image")
    return session.images[0], session.question


def run_ablation(engine: Engine, session: AttentionSession, box_text: str | None, method: str,
                 layer_choice: str | None, head_choice: str | None, view: View, adapter: Any = KEEP
                 ) -> tuple[str, Image.Image | None, Image.Image | None]:
    """(summary markdown, map before, map after) for removing the box, else the layer or head chosen."""
    image, question = _session_image(session)
    box = parse_box_text(box_text)
    layer = _number(layer_choice) if box is None else None
    head = _number(head_choice) if layer is not None else None
    if box is None and layer is None:
        raise InputError("draw a box (click two corners on the image) or choose a layer to knock out")
    outcome = ablate(engine, image, question, box=box, method=method, layer=layer, head=head, adapter=adapter)
    return ablation_summary(outcome), _first_map(outcome, "before", image, view), \
        _first_map(outcome, "after", outcome.image_after, view)


def _number(choice: str | None) -> int | None:
    """'layer 2' / 'head 1' -> 2 / 1; the 'none' choices -> None."""
    if not choice or choice in (NO_LAYER, ALL_HEADS_OUT):
        return None
    return parse_choice(choice)


def _first_map(outcome: AblationOutcome, which: str, image: Image.Image, view: View) -> Image.Image:
    asked = outcome.before if which == "before" else outcome.after
    if asked.result is None or not asked.result.answer_tokens:
        return image
    grid = asked.result.grids()[0]
    return render_map(image, asked.result.token_maps("answer", 0)[0], grid.box, view,
                      label=f"{which}: map of {asked.first_token.strip()!r}")


def ablation_summary(outcome: AblationOutcome) -> str:
    if outcome.box is not None:
        what = f"the box {', '.join(map(str, outcome.box))} removed by **{outcome.method}**"
        if outcome.removed_tokens:
            what += f" ({outcome.removed_tokens} image tokens)"
    elif outcome.head is not None:
        what = f"head {outcome.head} of layer {outcome.layer} knocked out"
    else:
        what = f"layer {outcome.layer} knocked out"
    verdict = "**The answer changed.**" if outcome.changed else "The answer stayed the same."
    token = outcome.before.first_token.strip() or outcome.before.first_token
    lines = [f"With {what}: {verdict}",
             f"- before: **{outcome.before.answer or '(empty)'}**, p({token!r}) = {outcome.p_before:.3f}",
             f"- after: **{outcome.after.answer or '(empty)'}**, p({token!r}) = {outcome.p_after:.3f}"]
    if outcome.notice:
        lines.append(f"- no maps: {outcome.notice}")
    return "\n".join(lines)


def _selected_answer_index(session: AttentionSession) -> int:
    result = session.result
    if result is None or not result.answer_tokens:
        raise InputError("ask a question with the Ask button first: the curves need an answer")
    if session.kind != "answer":
        raise InputError("click a word of the answer (not of the question): the curves follow an answer word")
    index = session.index if session.index >= 0 else len(result.answer_tokens) + session.index
    return max(0, min(index, len(result.answer_tokens) - 1))


def faithfulness_curves(engine: Engine, session: AttentionSession, extra_maps: dict[str, Any] | None = None,
                        steps: int = faithfulness.DEFAULT_STEPS, adapter: Any = KEEP
                        ) -> tuple[Image.Image, str, dict[str, faithfulness.Curves]]:
    """Deletion and insertion curves of the selected answer word: its default map, the vision
    rollout, any `extra_maps` (name -> function(model, processor, image, question, prefix_ids,
    token_id) -> (map, box)) and random orders. (plot, markdown table, curves)."""
    image, question = _session_image(session)
    result = session.result
    assert result is not None
    k = _selected_answer_index(session)
    token_id, prefix = int(result.answer_ids[k]), [int(t) for t in result.answer_ids[:k]]
    grid = result.grids()[0]
    maps = {"attention": (result.token_maps("answer", k)[0], grid.box)}
    if result.vision is not None:
        maps["rollout"] = (result.rollout_map(0, "cls"), result.vision_box(0))
    curves: dict[str, faithfulness.Curves] = {}
    with engine.locked(adapter=adapter) as model:
        for name, make in (extra_maps or {}).items():
            maps[name] = make(model, engine.processor, image, question, prefix, token_id)
        for name, (grid_map, box) in maps.items():
            curves[name] = faithfulness.map_curves(model, engine.processor, image, question, token_id, grid_map, box,
                                                   steps, prefix)
        curves["random"] = faithfulness.random_curves(model, engine.processor, image, question, token_id,
                                                      (grid.rows, grid.cols), grid.box, np.random.default_rng(0),
                                                      steps=steps, prefix_ids=prefix)
    word = result.answer_tokens[k].strip() or result.answer_tokens[k]
    return curves_plot(curves, word), curves_table(curves, word), curves


def curves_table(curves: dict[str, faithfulness.Curves], word: str) -> str:
    rows = [f"Cells painted over in each map's order, for the word **{word!r}** "
            "(deletion: lower is better; insertion: higher is better).", "",
            "| map | deletion AUC | insertion AUC |", "|---|---|---|"]
    rows += [f"| {name} | {c.deletion_auc:.3f} | {c.insertion_auc:.3f} |" for name, c in curves.items()]
    return "\n".join(rows)


def curves_plot(curves: dict[str, faithfulness.Curves], word: str) -> Image.Image:
    """Two panels, deletion and insertion: probability of the word against the share of cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100, sharey=True)
    for name, c in curves.items():
        style = {"linestyle": "--", "color": "grey"} if name == "random" else {}
        axes[0].plot(c.fractions, c.deletion, label=f"{name} ({c.deletion_auc:.2f})", **style)
        axes[1].plot(c.fractions, c.insertion, label=f"{name} ({c.insertion_auc:.2f})", **style)
    for ax, title in zip(axes, ("deletion: cells painted over", "insertion: cells given back")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("share of image cells")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8, title="map (AUC)", title_fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"p({word!r})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def picture_with_box(session: AttentionSession, box_text: str | None) -> Image.Image | None:
    """The asked image, enlarged to PICK_MIN_SIDE, with the region to remove outlined (None
    before any answer)."""
    if not session.images:
        return None
    from PIL import ImageDraw

    image = session.images[0].convert("RGB")
    scale = pick_scale(session)
    picture = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS) \
        if scale > 1 else image.copy()
    try:
        box = parse_box_text(box_text)
    except InputError:
        return picture
    if box is not None and box[2] > box[0] and box[3] > box[1]:  # an inverted box is refused on Ask
        width = max(2, round(max(picture.size) / 150))
        ImageDraw.Draw(picture).rectangle([v * scale for v in box], outline=(255, 0, 200), width=width)
    return picture


def knock_out_choices(session: AttentionSession) -> tuple[list[str], list[str]]:
    """Layer and head choices for knocking one out: 'no layer' first (then a box is used)."""
    result = session.result
    if result is None:
        return [NO_LAYER], [ALL_HEADS_OUT]
    return ([NO_LAYER] + [f"layer {i}" for i in range(result.n_layers)],
            [ALL_HEADS_OUT] + [f"head {i}" for i in range(result.n_heads)])


NO_LAYER = "no layer (use the box)"
ALL_HEADS_OUT = "the whole layer"


def _prompt_inputs(engine: Engine, model: Any, session: AttentionSession) -> Any:
    from vitdemo.chat.conversation import build_inputs, user_message
    from vitdemo.core.batch_inputs import to_model

    conversation = [user_message(session.question, len(session.images))]
    return to_model(build_inputs(engine.processor, conversation, session.images), model)


def relevancy_map_maker(model: Any, processor: Any, image: Image.Image, question: str, prefix_ids: Sequence[int],
                        token_id: int) -> tuple[np.ndarray, Any]:
    """The relevancy map of the answer token that follows `prefix_ids` (for faithfulness curves)."""
    from vitdemo.attention.layouts import build_layout
    from vitdemo.attention.relevancy import relevancy_maps
    from vitdemo.chat.conversation import build_inputs, user_message
    from vitdemo.core.batch_inputs import to_model

    inputs = to_model(build_inputs(processor, [user_message(question, 1)], [image]), model)
    layout = build_layout(model.config, processor, inputs, [image])
    maps = relevancy_maps(model, processor, inputs, [*prefix_ids, token_id], layout, len(prefix_ids))
    return maps[0], layout.grid(0).box


def relevancy_picture(engine: Engine, session: AttentionSession, view: View, adapter: Any = KEEP) -> Image.Image:
    """The selected answer word's relevancy map (gradient-weighted attention) on the image."""
    from vitdemo.attention.relevancy import relevancy_maps

    image, _ = _session_image(session)
    result = session.result
    assert result is not None
    k = _selected_answer_index(session)
    with engine.locked(adapter=adapter) as model:
        maps = relevancy_maps(model, engine.processor, _prompt_inputs(engine, model, session), result.answer_ids,
                              result.layout, k)
    word = result.answer_tokens[k].strip() or result.answer_tokens[k]
    return render_map(image, maps[0], result.layout.grid(0).box, view, label=f"relevancy of {word!r}")


def _cell_text(token: str) -> str:
    """A token as a markdown table cell shows it: visible, with no column break."""
    text = token.strip() or repr(token)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def lens_choices(session: AttentionSession) -> list[str]:
    """Layers the patch words can be read at: the embeddings, then each decoder layer."""
    result = session.result
    n = result.n_layers if result is not None else 0
    return ["embeddings (0)"] + [f"after layer {i}" for i in range(1, n + 1)]


def _lens_layer(choice: str | None) -> int:
    if not choice or choice.startswith("embeddings"):
        return 0
    return int(choice.rsplit(" ", 1)[-1])


def lens_view(engine: Engine, session: AttentionSession, layer_choice: str | None, adapter: Any = KEEP
              ) -> tuple[str, Image.Image]:
    """(table of what each layer decodes to at the selected word, the image's patch words at the chosen layer)."""
    from vitdemo.attention.lens_picture import draw_patch_words
    from vitdemo.attention.logit_lens import answer_lens, patch_words, run_lens

    image, _ = _session_image(session)
    result = session.result
    assert result is not None
    k = _selected_answer_index(session)
    tokenizer = getattr(engine.processor, "tokenizer", engine.processor)
    with engine.locked(adapter=adapter) as model:
        lens = run_lens(model, _prompt_inputs(engine, model, session), result.answer_ids)
        (token,) = answer_lens(lens, tokenizer, [k])
        words = patch_words(lens, tokenizer, result.layout, _lens_layer(layer_choice), images=[0])[0]
    rows = [f"What the stream predicting **{_cell_text(token.token)}** decodes to, layer by layer "
            "(top 5, probability):", "", "| layer | top 5 | p(answer word) |", "|---|---|---|"]
    for layer in range(lens.n_layers + 1):
        top = ", ".join(f"{_cell_text(t)} {p:.2f}" for t, p in zip(token.top_tokens[layer], token.top_probs[layer]))
        name = "embeddings" if layer == 0 else f"layer {layer}"
        rows.append(f"| {name} | {top} | {token.token_probs[layer]:.3f} |")
    picture = draw_patch_words(image, words.words, words.box, words.probs)
    return "\n".join(rows), picture
