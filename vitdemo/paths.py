"""Where the repository's shipped files live: the one place asset paths are computed."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
# The shipped classroom model; the default model when it is present.
CLASSROOM_MODEL_DIR = ASSETS_DIR / "classroom"
EXAMPLES_DIR = ASSETS_DIR / "examples"  # example images of the Chat and Learn tabs
DATASETS_DIR = ASSETS_DIR / "datasets"  # example fine-tune datasets
ADAPTERS_DIR = ASSETS_DIR / "adapters"  # example adapters every user may load
