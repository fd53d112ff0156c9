"""`attend` subcommand: answer a question about an image and show where each word looked.

    python -m vitdemo attend --image PATH --question TEXT [--json] [--out DIR] [--logit-lens]

Prints the answer; `--json` prints an object with answer, tokens, grid ([rows, cols] per
image) and maps (per answer token, per image, the default map as rows x cols floats);
`--out` writes one overlay PNG per answer token and image plus maps.npz and maps.json.
`--logit-lens` adds a second forward pass (vitdemo.attention.logit_lens): the JSON gets a
`logit_lens` key (`logit_lens.lens_payload`), plain output a top-1 line per answer token,
and `--out` one `lens_layer<L>_image<I>.png` per layer and image (each patch's top word).
It is a CLI flag, not part of `attend_payload`, because that payload is also the app's
/attend answer, where an extra pass and a vocabulary decode per image token and layer
would cost every caller.
Errors: one line on stderr and exit status 2 (1 for an unexpected failure).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitdemo.core.engine import Engine

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitdemo.config import add_arguments
    from vitdemo.attention.heatmaps import COLORMAPS, DEFAULT_COLORMAP

    p = subparsers.add_parser("attend", help="answer about an image and show each word's attention map")
    p.add_argument("--image", action="append", required=True, type=Path,
                   help="image file (repeat for several images in one message)")
    p.add_argument("--question", required=True, help="the question about the image(s)")
    p.add_argument("--json", action="store_true", help="print answer, tokens, grids and maps as JSON")
    p.add_argument("--out", type=Path, help="folder for overlay PNGs, maps.npz and maps.json")
    p.add_argument("--max-new-tokens", dest="attend_max_new_tokens", type=int, default=64,
                   help="answer length limit (default 64)")
    p.add_argument("--colormap", default=DEFAULT_COLORMAP, help=f"overlay colormap, e.g. {', '.join(COLORMAPS)}")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    p.add_argument("--logit-lens", dest="logit_lens", action="store_true",
                   help="also decode every layer's hidden states (top-5 per answer token, patch words)")
    add_arguments(p, server=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitdemo.errors import VitdemoError

    try:
        return _run(args)
    except VitdemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug, but the user still gets one line
        log.debug("attend failed", exc_info=True)
        print(f"error: unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
              file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from vitdemo.attention.attend import View, attend, attend_payload, export
    from vitdemo.chat.conversation import GenerationSettings
    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.images import open_image
    from vitdemo.errors import InputError
    from vitdemo.attention.heatmaps import colormap

    if not args.question.strip():
        raise InputError("--question is empty")
    if not 0.0 <= args.opacity <= 1.0:
        raise InputError(f"--opacity {args.opacity} must be between 0 and 1")
    colormap(args.colormap)  # a bad name fails before the model loads
    settings = Settings.from_args(args)
    images = [open_image(str(p), max_pixels=settings.max_image_pixels) for p in args.image]
    engine = Engine.from_settings(settings)
    gen = GenerationSettings(max_new_tokens=args.attend_max_new_tokens)
    answer, result, notice = attend(engine, images, args.question, gen)
    if notice:
        print(f"note: no attention maps: {notice}", file=sys.stderr)
    if args.out and result is not None:
        written = export(result, images, args.out, View(cmap=args.colormap, opacity=args.opacity))
        log.info("wrote %d files to %s", len(written), args.out)
    lens, lens_notice = (_logit_lens(engine, images, args.question, answer, result, args.out)
                         if args.logit_lens else (None, None))
    if lens_notice:
        print(f"note: no logit lens: {lens_notice}", file=sys.stderr)
    if args.json:
        payload = attend_payload(answer, result, notice)
        if args.logit_lens:
            payload["logit_lens"] = lens
            payload["logit_lens_notice"] = lens_notice
        print(json.dumps(payload))
    else:
        print(answer)
        for token in (lens or {}).get("tokens", []):
            print(f"{token['token']!r}: " + " | ".join(f"{name} {top[0][0]!r} {top[0][1]:.2f}" for name, top
                                                   in zip(lens["layer_names"], token["top"])))
        if args.out and result is not None:
            print(f"maps written to {args.out}", file=sys.stderr)
    return 0


def _logit_lens(engine: Engine, images: list[Any], question: str, answer: str, result: Any,
                out: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """(lens_payload or None, notice or None); with `out`, one patch-words PNG per layer and image."""
    from vitdemo.attention.lens_picture import draw_patch_words
    from vitdemo.attention.logit_lens import attend_lens, patch_words
    from vitdemo.errors import UnsupportedModelError

    tokenizer = getattr(engine.processor, "tokenizer", engine.processor)
    if result is not None:
        answer_ids = list(result.answer_ids)
    else:  # answered without maps: the capture's ids are missing, the text is re-tokenised
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        log.info("logit lens: answer ids re-tokenised from the text (%d tokens)", len(answer_ids))
    if not answer_ids:
        return None, "the answer is empty"
    try:
        lens, layout, payload = attend_lens(engine, images, question, answer_ids)
    except UnsupportedModelError as err:
        return None, str(err)
    if out is not None and layout is not None:
        out.mkdir(parents=True, exist_ok=True)
        with engine.locked():  # lm_head runs again for every image's grid
            for layer in range(lens.n_layers + 1):
                for grid in patch_words(lens, tokenizer, layout, layer):
                    draw_patch_words(images[grid.image], grid.words, grid.box, grid.probs).save(
                        out / f"lens_layer{layer}_image{grid.image}.png")
        log.info("wrote %d logit-lens pictures to %s", (lens.n_layers + 1) * layout.n_images, out)
    return payload, None
