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


def short_model_name(source: str) -> str:
    """What the page shows for a model source: a Hub id as it is, a local folder by its name
    (the server's absolute path means nothing to a remote user and tells them too much)."""
    text = str(source)
    path = Path(text)
    if not path.is_absolute() and not text.startswith((".", "~")):
        return text  # a Hub id such as org/name
    try:
        if path.resolve() == CLASSROOM_MODEL_DIR.resolve():
            return "classroom model"
    except OSError:
        pass
    return f"local model {path.name or text}"
