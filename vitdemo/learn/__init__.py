"""Logic behind the Learn tab: visual instruction tuning explained on the live model."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from vitdemo.core.engine import Engine
from vitdemo.errors import UnsupportedModelError


def classroom_folder(engine: Engine) -> Path:
    """The loaded model's folder if it carries the classroom extras, else a polite error."""
    folder = Path(str(engine.loaded.source))
    if (folder / "training.json").is_file() and (folder / "contrastive").is_dir():
        return folder
    raise UnsupportedModelError(
        f"this section needs the classroom model's extra parts (its contrastive encoders and training "
        f"record); the loaded model {engine.loaded.source} does not have them. Start vitdemo without "
        f"--model to use the classroom model.")


def decoder_layers_and_heads(engine: Engine) -> tuple[int, int]:
    """The language model's layer and head counts, from config.json when the model is a
    local folder (so the Learn tab is built while the model still loads), else from the model."""
    try:
        config = json.loads((Path(str(engine.source)) / "config.json").read_text())
        text = config.get("text_config") or config
        return int(text["num_hidden_layers"]), int(text["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        text_cfg = engine.model.config.get_text_config()
        return int(getattr(text_cfg, "num_hidden_layers", 1)), int(getattr(text_cfg, "num_attention_heads", 1))


@lru_cache(maxsize=2)
def contrastive_model(folder: Path):
    from vitdemo.classroom.report import load_contrastive

    return load_contrastive(folder)
