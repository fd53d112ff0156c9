"""Entry point: `python app.py [flags]` launches the app; Hugging Face Spaces imports `demo`.

Flags are those of `python -m vitdemo serve` (see --help); VITDEMO_* env vars work too.
"""

from __future__ import annotations

import argparse
import sys

from vitdemo.serving.cpu_threads import prefer_sleeping_cpu_workers

# Both ways in (run, or imported by Spaces) serve: torch's CPU workers must sleep between
# operations, and that is read when torch loads, so set it before anything imports torch.
prefer_sleeping_cpu_workers()

from vitdemo.config import Settings, add_arguments, setup_logging  # noqa: E402


def _settings(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python app.py", description="vitdemo web app")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    return Settings.from_args(args)


if __name__ == "__main__":
    from vitdemo.errors import VitdemoError
    from vitdemo.ui.app import build_ui, launch

    try:
        settings = _settings(sys.argv[1:])
        launch(build_ui(settings, defer_load=True), settings)
    except VitdemoError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
else:
    # Imported by Spaces (or `gradio app.py`): settings from env vars only.
    import os

    from vitdemo.ui.app import build_ui

    # Hosts that launch `demo` themselves may turn server-side rendering on through this
    # variable; Gradio 6.27-6.32 have an auth bypass with it on.
    os.environ["GRADIO_SSR_MODE"] = "False"
    setup_logging()
    demo = build_ui(Settings.from_env())
