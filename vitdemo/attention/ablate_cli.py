"""`ablate` subcommand: ask about an image, remove a part of it (or a layer or a head), ask again.

    python -m vitdemo ablate --image IMG --question Q --box x0,y0,x1,y1 [--method M] [--json]
    python -m vitdemo ablate --image IMG --question Q --layer L [--head H] [--json]

The box is in pixels of the original image. Prints both answers and the probability of the
first answer token before and after; `--json` prints one object (answer_before,
answer_after, p_before, p_after, method, ...); `--out DIR` writes what the model saw after
the removal and the first answer token's map before and after. Errors: one line on stderr,
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitdemo.attention.interventions import REGION_METHODS


def parse_box(text: str) -> tuple[float, float, float, float]:
    """"x0,y0,x1,y1" -> four floats (argparse type: a bad box is a usage error, not a crash)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not four numbers x0,y0,x1,y1") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} has {len(values)} numbers; a box needs x0,y0,x1,y1")
    return values  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitdemo.config import add_arguments

    p = subparsers.add_parser("ablate", help="remove part of an image (or a layer/head) and see the answer change")
    p.add_argument("--image", required=True, type=Path, help="image file")
    p.add_argument("--question", required=True, help="the question about the image")
    p.add_argument("--box", type=parse_box, help="region to remove: x0,y0,x1,y1 in pixels of the image")
    p.add_argument("--method", default="blank", choices=REGION_METHODS,
                   help="how the box is removed: blank (paint with the background colour, default), mean-colour, "
                        "mask-tokens (hide its image tokens from attention), mean-tokens (replace them by the mean)")
    p.add_argument("--layer", type=int, help="knock out this decoder layer (instead of a box)")
    p.add_argument("--head", type=int, help="with --layer: knock out only this attention head")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, help="folder for the image after removal and the maps before/after")
    add_arguments(p, server=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """(python -m vitdemo turns a VitdemoError into its one-line message and exit status 2.)"""
    from vitdemo.attention.ablation import ablate, check_request
    from vitdemo.attention.attend import View, render_token
    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.images import open_image
    from vitdemo.errors import InputError

    if not args.question.strip():
        raise InputError("--question is empty")
    check_request(args.method, args.box, args.layer, args.head)  # before the model loads
    settings = Settings.from_args(args)
    image = open_image(str(args.image), max_pixels=settings.max_image_pixels)
    engine = Engine.from_settings(settings)
    outcome = ablate(engine, image, args.question, box=args.box, method=args.method, layer=args.layer,
                     head=args.head)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        outcome.image_after.save(args.out / "after_input.png")
        for name, asked, picture in (("before", outcome.before, image), ("after", outcome.after, outcome.image_after)):
            if asked.result is not None and asked.result.answer_tokens:
                render_token(asked.result, [picture], "answer", 0, view=View()).save(args.out / f"map_{name}.png")
    if args.json:
        print(json.dumps(outcome.to_json()))
    else:
        print(f"before: {outcome.before.answer}  (p({outcome.before.first_token!r}) = {outcome.p_before:.3f})")
        print(f"after:  {outcome.after.answer}  (p({outcome.before.first_token!r}) = {outcome.p_after:.3f})")
        if outcome.notice:
            print(f"note: no maps: {outcome.notice}", file=sys.stderr)
    return 0
