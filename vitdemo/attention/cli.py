"""`attend` subcommand: answer a question about an image and show where each word looked.

    python -m vitdemo attend --image PATH --question TEXT [--json] [--out DIR]

Prints the answer; `--json` prints an object with answer, tokens, grid ([rows, cols] per
image) and maps (per answer token, per image, the default map as rows x cols floats);
`--out` writes one overlay PNG per answer token and image plus maps.npz and maps.json.
Errors: one line on stderr and exit status 2 (1 for an unexpected failure).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
    if args.json:
        print(json.dumps(attend_payload(answer, result, notice)))
    else:
        print(answer)
        if args.out and result is not None:
            print(f"maps written to {args.out}", file=sys.stderr)
    return 0
