"""What the attention tab shows, as plain functions (no gradio): choices, spans, pictures.

The UI keeps an `AttentionSession` per user (in gr.State) and calls these to turn the
user's selection (token, layer, head, image, colormap, opacity) into pictures and text.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from vitdemo.attention import heatmaps
from vitdemo.attention.attend import View, export, render_heads, render_map, render_vision
from vitdemo.attention.maps import DEFAULT_SPEC, AttentionResult, MapSpec, TokenKind
from vitdemo.errors import InputError

log = logging.getLogger(__name__)

MIDDLE_LAYERS = "middle layers"  # the language model's default map (attention.DEFAULT_SPEC)
ALL_LAYERS = "all layers"
ALL_HEADS = "all heads"


@dataclass
class AttentionSession:
    """One user's last answer with maps."""

    images: list[Image.Image] = field(default_factory=list)
    question: str = ""  # the question that was answered (the causal checks ask it again)
    result: AttentionResult | None = None
    kind: TokenKind = "answer"  # which token list the selection is in
    index: int = -1  # selected token (-1: the latest)
    notice: str | None = None  # why there are no maps
    # The dropdown choices this user's page shows, so they are only sent again when they change
    # (every choices update makes Gradio keep another copy of the component for the session).
    choices_key: tuple | None = None
    vision_key: tuple | None = None


def layer_choices(n_layers: int, middle: bool = True) -> list[str]:
    """Layer choices: the language model's default (middle layers, when `middle`), all, each one."""
    return [MIDDLE_LAYERS] * middle + [ALL_LAYERS] + [f"layer {i}" for i in range(n_layers)]


def head_choices(n_heads: int) -> list[str]:
    return [ALL_HEADS] + [f"head {i}" for i in range(n_heads)]


def parse_choice(choice: str | None) -> int | None:
    """'layer 3' -> 3, 'all ...', 'middle ...' or None -> None."""
    if not choice or choice.startswith(("all", "middle")):
        return None
    try:
        return int(choice.rsplit(" ", 1)[-1])
    except ValueError:
        raise InputError(f"cannot read a layer or head number from {choice!r}") from None


def spec_for(layer: str | None, head: str | None) -> MapSpec:
    """The default map for the default choices (middle layers, all heads), else that layer/head."""
    li, hi = parse_choice(layer), parse_choice(head)
    middle = layer is None or layer == MIDDLE_LAYERS
    if middle and hi is None:
        return DEFAULT_SPEC
    return MapSpec(layers=None if li is None else (li,), heads=None if hi is None else (hi,), middle=middle)


def token_spans(tokens: list[str], selected: int | None) -> list[tuple[str, str | None]]:
    """(text, label) pairs for a highlighted-text view: the selected token is labelled."""
    if selected is not None and selected < 0:
        selected += len(tokens)
    return [(tok, "selected" if k == selected else None) for k, tok in enumerate(tokens)]


def _resolve(session: AttentionSession) -> tuple[AttentionResult, TokenKind, int]:
    result = session.result
    if result is None:
        raise InputError(session.notice or "ask a question about an image first")
    n = len(result.answer_tokens) if session.kind == "answer" else len(result.prompt_tokens)
    if n == 0:
        raise InputError("the answer has no tokens to show")
    index = session.index if session.index >= 0 else n + session.index
    return result, session.kind, min(max(index, 0), n - 1)


def token_caption(session: AttentionSession, layer: str | None, head: str | None) -> str:
    result, kind, index = _resolve(session)
    tokens = result.answer_tokens if kind == "answer" else result.prompt_tokens
    return (f"{'answer' if kind == 'answer' else 'question'} token {index}: {tokens[index]!r} — "
            f"{spec_for(layer, head).describe()}")


def token_picture(session: AttentionSession, layer: str | None, head: str | None, image: int,
                  view: View) -> Image.Image:
    result, kind, index = _resolve(session)
    if not 0 <= image < len(session.images):
        raise InputError(f"image {image + 1} does not exist; there are {len(session.images)}")
    grid = result.grids()[image]
    grid_map = result.token_maps(kind, index, spec_for(layer, head))[image]
    return render_map(session.images[image], grid_map, grid.box, view)


def heads_picture(session: AttentionSession, layer: str | None, image: int, view: View) -> Image.Image:
    result, kind, index = _resolve(session)
    return render_heads(result, session.images, kind, index, parse_choice(layer), view, image)


def share_picture(session: AttentionSession) -> tuple[Image.Image, heatmaps.SharePlotGeometry]:
    result, kind, _ = _resolve(session)
    return heatmaps.share_plot(result.image_share(kind))


def share_click(session: AttentionSession, x: float, y: float) -> tuple[str, str] | None:
    """(layer choice, head choice) of a click on the share plot, None outside the cells."""
    _, geom = share_picture(session)
    hit = geom.cell_at(x, y)
    return None if hit is None else (f"layer {hit[0]}", f"head {hit[1]}")


def vision_picture(session: AttentionSession, mode: Literal["attention", "rollout"], layer: str | None,
                   head: str | None, query: Literal["cls", "mean"], image: int, view: View) -> Image.Image:
    result, _, _ = _resolve(session)
    if query == "cls" and result.vision is not None and result.vision.cls_rows is None:
        query = "mean"  # encoders without a CLS token (SigLIP): the mean query is all there is
    return render_vision(result, session.images, image, mode, parse_choice(layer), parse_choice(head), query, view)


Selector = tuple[list[str], str]  # a dropdown's choices and its selected value


def answer_selectors(session: AttentionSession, layer: str, head: str, image: str) -> list[Selector]:
    """Layer, head and image selectors for the session's answer; a selection that is no
    longer among the choices falls back to the default."""
    result = session.result
    if result is None:
        raise InputError("ask a question first")
    layers, heads = layer_choices(result.n_layers), head_choices(result.n_heads)
    names = [f"image {i + 1}" for i in range(len(session.images))]
    return [(layers, layer if layer in layers else MIDDLE_LAYERS), (heads, head if head in heads else ALL_HEADS),
            (names, image if image in names else names[0])]


def vision_selectors(session: AttentionSession) -> list[Selector]:
    """Encoder layer and head selectors (reset to all), for the session's vision attention."""
    result = session.result
    if result is None or result.vision is None:
        return [([ALL_LAYERS], ALL_LAYERS), ([ALL_HEADS], ALL_HEADS)]
    _, n_layers, n_heads, _ = result.vision.mean_rows.shape  # (tiles, layers, heads, n_patches)
    # the encoder has no "middle" default
    return [(layer_choices(n_layers, middle=False), ALL_LAYERS), (head_choices(n_heads), ALL_HEADS)]


DOWNLOAD_TTL_S = 600.0  # Gradio copies returned files into its own cache at once; ours may go after this


def download_folder(root: Path | None = None, ttl_s: float = DOWNLOAD_TTL_S) -> Path:
    """A fresh folder for one set of downloads; folders older than ttl_s are removed, so
    pressing "Prepare files" all day does not fill the disk."""
    root = root or Path(tempfile.gettempdir()) / "vitdemo-maps"
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - ttl_s
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another server removed it first
            continue
    return Path(tempfile.mkdtemp(dir=root))


def downloads(session: AttentionSession, view: View, root: Path | None = None, layer: str | None = None,
              head: str | None = None) -> list[str]:
    """Write PNGs, maps.npz and maps.json of the current answer into a fresh download folder,
    for the layer and head chosen on screen (default: the default map)."""
    result, _, _ = _resolve(session)
    return [str(p) for p in export(result, session.images, download_folder(root), view, spec_for(layer, head))]


class StopSignal:
    """The Stop button's event for one user (in its own gr.State).

    A plain class with its own deepcopy: gr.State copies its initial value per user, and an
    Event cannot be copied. The answer stops after the current word and keeps its maps.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def __deepcopy__(self, memo: dict) -> "StopSignal":
        return StopSignal()


def blank(size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.full((*size[::-1], 3), 255, np.uint8)
