"""Command line: `python -m vitdemo serve | ask | <subcommands from each capability's cli.py>`.

Errors are one line on stderr (`error: ...`) and a non-zero exit: 2 for a problem the
user can fix (VitdemoError), 1 for anything else.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from vitdemo.config import add_arguments, setup_logging

logger = logging.getLogger("vitdemo.cli")

# Subcommands owned by the capability packages, each module exposing register(subparsers).
# Imported when the command line is parsed (none imports torch at module level).
CAPABILITY_CLIS: tuple[str, ...] = (
    "vitdemo.attention.cli",  # attend
    "vitdemo.attention.ablate_cli",  # ablate
    "vitdemo.finetune.cli",  # finetune, eval
    "vitdemo.classroom.cli",  # build-classroom, eval-classroom, logit-lens-classroom
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vitdemo", description="Chat with images through "
                                     "vision-language models, see their attention, fine-tune them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="start the web app (same as `python app.py`)")
    add_arguments(serve)
    serve.set_defaults(func=run_serve)

    ask = sub.add_parser("ask", help="answer one question about one or more images")
    ask.add_argument("--image", action="append", required=True, type=Path,
                     help="image file (repeat for several images)")
    ask.add_argument("--question", required=True, help="the question")
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer, model, timings)")
    ask.add_argument("--max-new-tokens", dest="ask_max_new_tokens", type=int, default=256,
                     help="answer length limit (default 256)")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--top-p", dest="top_p", type=float, default=1.0, help="nucleus mass when sampling")
    ask.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_arguments(ask, server=False)
    ask.set_defaults(func=run_ask)

    for name in CAPABILITY_CLIS:
        importlib.import_module(name).register(sub)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    from vitdemo.serving.cpu_threads import prefer_sleeping_cpu_workers

    prefer_sleeping_cpu_workers()  # before torch is imported (as app.py does)
    from vitdemo.config import Settings
    from vitdemo.ui.app import build_ui, launch

    settings = Settings.from_args(args)
    launch(build_ui(settings, defer_load=True), settings)
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from vitdemo.chat import conversation
    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.images import open_image
    from vitdemo.errors import InputError

    settings = Settings.from_args(args)
    if not args.question.strip():
        raise InputError("--question is empty")
    if len(args.image) > settings.max_images_per_message:
        raise InputError(f"{len(args.image)} images; the limit is {settings.max_images_per_message}")
    images = [open_image(str(p), max_pixels=settings.max_image_pixels) for p in args.image]
    gen = conversation.GenerationSettings(max_new_tokens=args.ask_max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    gen.validate()
    engine = Engine.from_settings(settings)
    stats = conversation.AnswerStats()
    conv = [conversation.user_message(args.question, len(images))]
    answer = "".join(conversation.stream_answer(engine, conv, images, gen, stats=stats)).strip()
    if args.json:
        print(json.dumps({
            "answer": answer,
            "model": engine.loaded.source,
            "device": engine.device,
            "quant": engine.loaded.quantized,
            "adapter": engine.active_adapter,
            "input_tokens": stats.input_tokens,
            "new_tokens": stats.new_tokens,
            "first_token_s": round(stats.first_token_s or 0.0, 4),
            "seconds": round(stats.total_s, 4),
        }))
    else:
        print(answer)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from vitdemo.errors import VitdemoError

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(verbose="-v" in argv or "--verbose" in argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VitdemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug, but the user still gets one line
        logger.info("command failed", exc_info=True)  # the traceback, with -v
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"error: unexpected {type(err).__name__}: {first} (run with -v for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
