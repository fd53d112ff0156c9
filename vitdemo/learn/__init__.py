"""Logic behind the Learn tab: visual instruction tuning explained on the live model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from vitdemo.errors import UnsupportedModelError


def classroom_folder(engine: Any) -> Path:
    """The loaded model's folder if it carries the classroom extras, else a polite error."""
    folder = Path(str(engine.loaded.source))
    if (folder / "training.json").is_file() and (folder / "contrastive").is_dir():
        return folder
    raise UnsupportedModelError(
        f"this section needs the classroom model's extra parts (its contrastive encoders and training "
        f"record); the loaded model {engine.loaded.source} does not have them. Start vitdemo without "
        f"--model to use the classroom model.")


@lru_cache(maxsize=2)
def contrastive_model(folder: Path):
    from vitdemo.classroom.report import load_contrastive

    return load_contrastive(folder)
