"""Ask with attention maps: the engine-level API used by the CLI and the UI.

`stream_with_maps` answers a conversation, yielding every new answer token together with
the capture so far. When maps are impossible (an architecture without a layout, an input
too large to capture) it says why once and still streams the answer through the plain
chat path. `render_*` turn a result into pictures; `export` writes PNGs and raw numbers.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vitdemo.attention import heatmaps
from vitdemo.attention.maps import DEFAULT_SPEC, AttentionResult, MapSpec, TokenKind
from vitdemo.attention.capture import (
    CaptureMemoryError,
    CaptureSettings,
    NoAttentionWeightsError,
    plan_capture,
    stream_capture,
)
from vitdemo.core.engine import KEEP, Engine
from vitdemo.errors import InputError, UnsupportedModelError
from vitdemo.attention.layouts import build_layout

log = logging.getLogger(__name__)


@dataclass
class MapsEvent:
    """One streamed answer token."""

    text: str  # the answer so far
    token: str  # the new piece of text
    index: int | None  # answer-token index of the new token; None when there are no maps
    result: AttentionResult | None  # the capture so far (None without maps)
    notice: str | None = None  # why there are no maps (shown once by the UI)


def stream_with_maps(engine: Engine, conversation: Sequence[dict[str, Any]], images: Sequence[Image.Image],
                     gen: Any = None, settings: CaptureSettings = CaptureSettings(),
                     stop_event: threading.Event | None = None, adapter: Any = KEEP) -> Iterator[MapsEvent]:
    """Answer the conversation with capture on; see the module docstring.

    `adapter`: a PEFT folder, None for the base model, or engine.KEEP (the server's default).
    """
    import torch

    from vitdemo.core.batch_inputs import to_model
    from vitdemo.chat.conversation import GenerationSettings, build_inputs, check_context, stream_answer

    gen = gen or GenerationSettings()
    gen.validate()
    gen = gen.within_model_cap(engine.model)
    inputs = build_inputs(engine.processor, conversation, images)
    # The Chat tab's check: a question longer than the model reads is refused, not answered.
    check_context(engine.model, engine.processor, conversation, images, int(inputs["input_ids"].shape[-1]))
    notice = None
    layout = None
    try:
        layout = build_layout(engine.model.config, engine.processor, inputs, images)
        plan_capture(engine.model, inputs, layout, gen.max_new_tokens, settings)
    except (UnsupportedModelError, CaptureMemoryError) as err:
        notice = str(err)
        log.warning("answering without maps: %s", notice)
    if notice is None:
        yielded = False
        try:
            with engine.locked(adapter=adapter):
                if gen.seed is not None:
                    torch.manual_seed(gen.seed)
                for step in stream_capture(engine.model, engine.processor, to_model(inputs, engine.model), images,
                                           gen.generate_kwargs(), settings, stop_event, layout):
                    yielded = True
                    yield MapsEvent(step.text, step.token, step.index, step.result)
            return
        except NoAttentionWeightsError as err:
            if yielded:
                raise
            notice = str(err)  # e.g. a model that cannot switch to eager attention
            log.warning("answering without maps: %s", notice)
    text = ""
    for piece in stream_answer(engine, conversation, images, gen, stop_event=stop_event, adapter=adapter):
        text += piece
        yield MapsEvent(text, piece, None, None, notice)


def attend(engine: Engine, images: Sequence[Image.Image], question: str, gen: Any = None,
           settings: CaptureSettings = CaptureSettings()) -> tuple[str, AttentionResult | None, str | None]:
    """(answer, result or None, notice): one question about one or more images."""
    from vitdemo.chat.conversation import user_message

    text, result, notice = "", None, None
    for event in stream_with_maps(engine, [user_message(question, len(images))], images, gen, settings):
        text, result, notice = event.text, event.result, event.notice
    return text.strip(), result, notice


def attend_payload(answer: str, result: AttentionResult | None, notice: str | None) -> dict[str, Any]:
    """What `attend --json` prints and the app's /attend returns: answer, tokens, grid,
    boxes and each answer token's default map (see AttentionResult.to_json); without maps
    (an unsupported model) the answer, empty lists and `notice` saying why."""
    if result is None:
        return {"answer": answer, "tokens": [], "grid": [], "maps": [], "notice": notice}
    return result.to_json()


def attend_json(engine: Engine, images: Sequence[Image.Image], question: str, gen: Any = None) -> dict[str, Any]:
    """attend() as the JSON object of attend_payload."""
    return attend_payload(*attend(engine, images, question, gen))


def attend_file(engine: Engine, image_path: str | None, question: str | None, gen: Any = None,
                max_pixels: int | None = None) -> dict[str, Any]:
    """attend_json for one image file, with the Attention tab's checks (InputError/ImageError)."""
    from vitdemo.core.images import DEFAULT_MAX_PIXELS, open_image

    if not image_path:
        raise InputError("give an image file to ask about")
    if not (question or "").strip():
        raise InputError("the question is empty: type a question about the image")
    image = open_image(image_path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    return attend_json(engine, [image], str(question), gen)


# ----------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class View:
    """How to draw a map."""

    cmap: str = heatmaps.DEFAULT_COLORMAP  # matplotlib colormap name
    opacity: float = 0.5  # of the heatmap over the image
    smooth: bool = False  # bilinear instead of one flat colour per cell
    colorbar: bool = True  # a colour bar with the value range under the picture
    min_side: int = 0  # enlarge smaller images to this many pixels on the long side (screens)
    # Colours centred on zero (-m..m, m the largest |value|): for differences, with a diverging
    # colormap, so white means "no change" instead of the smallest value.
    centre_zero: bool = False


def render_map(image: Image.Image, grid_map: np.ndarray, box: tuple[float, float, float, float],
               view: View = View(), label: str = "attention") -> Image.Image:
    scale = view.min_side / max(image.size) if view.min_side and max(image.size) < view.min_side else 1.0
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
    lo, hi = float(np.min(grid_map)), float(np.max(grid_map))
    if view.centre_zero:
        lo, hi = -max(abs(lo), abs(hi), 1e-12), max(abs(lo), abs(hi), 1e-12)
    pic = heatmaps.overlay(image, grid_map, box, cmap=view.cmap, opacity=view.opacity, smooth=view.smooth,
                           vmin=lo, vmax=hi)
    if view.colorbar:
        bar = heatmaps.colorbar(view.cmap, lo, hi, width=max(pic.width, 160), label=label)
        out = Image.new("RGB", (max(pic.width, bar.width), pic.height + bar.height + 4), "white")
        out.paste(pic, (0, 0))
        out.paste(bar, (0, pic.height + 4))
        return out
    return pic


def render_token(result: AttentionResult, images: Sequence[Image.Image], kind: TokenKind, index: int,
                 spec: MapSpec = DEFAULT_SPEC, view: View = View(), image: int = 0) -> Image.Image:
    """Overlay of one token's map on one image."""
    grid = result.grids()[image]
    return render_map(images[image], result.token_maps(kind, index, spec)[image], grid.box, view)


def render_heads(result: AttentionResult, images: Sequence[Image.Image], kind: TokenKind, index: int,
                 layer: int | None, view: View = View(), image: int = 0) -> Image.Image:
    """Grid of small overlays, one per head of `layer` (None: layers averaged)."""
    maps = result.head_maps(kind, index, None if layer is None else (layer,), image)  # (heads, rows, cols)
    return heatmaps.head_grid(images[image], maps, result.grids()[image].box, cmap=view.cmap,
                              opacity=view.opacity, smooth=view.smooth,
                              labels=[f"head {h}" for h in range(len(maps))])


def render_vision(result: AttentionResult, images: Sequence[Image.Image], image: int,
                  mode: Literal["attention", "rollout"], layer: int | None, head: int | None,
                  query: Literal["cls", "mean"], view: View = View()) -> Image.Image:
    """Vision-encoder attention (per layer/head, CLS or mean query) or its rollout."""
    if mode == "rollout":
        grid_map = result.rollout_map(image, query)
    else:
        grid_map = result.vision_maps(image, layer, head, query)
    return render_map(images[image], grid_map, result.vision_box(image), view, label=f"vision {mode}")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text.strip())[:24] or "tok"


def export(result: AttentionResult, images: Sequence[Image.Image], out_dir: Path | str,
           view: View = View(), spec: MapSpec = DEFAULT_SPEC) -> list[Path]:
    """Write one PNG per answer token and image, maps.npz (raw numbers) and maps.json.

    PNGs and the JSON maps follow `spec` (the layer and head chosen on screen); the npz
    keeps the raw attention plus the default maps and, for another spec, its maps too.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, token in enumerate(result.answer_tokens):
        for i in range(result.layout.n_images):
            path = out / f"token{k:03d}_{_safe(token)}_image{i}.png"
            render_token(result, images, "answer", k, spec, view, i).save(path)
            written.append(path)
    per_token = [result.token_maps("answer", k, spec) for k in range(len(result.answer_tokens))]
    arrays = result.to_arrays()
    payload = result.to_json()
    if spec != DEFAULT_SPEC:
        for i, maps in enumerate(zip(*per_token) if per_token else []):
            arrays[f"selected_maps_image{i}"] = np.stack(maps)  # (n_answer, rows, cols)
    # The JSON describes the maps the user chose (the default ones unless a layer/head was picked).
    payload["map_spec"] = spec.describe()
    payload["maps"] = [per_image[0].astype(float).round(6).tolist() for per_image in per_token]
    payload["maps_per_image"] = [[m.astype(float).round(6).tolist() for m in per_image] for per_image in per_token]
    payload["smooth_png"] = view.smooth
    written.append(heatmaps.save_npz(out / "maps.npz", arrays))
    written.append(heatmaps.save_json(out / "maps.json", payload))
    return written
