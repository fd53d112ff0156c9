"""Adapters in memory are bounded: the least recently used go, removed folders go, the
server default and adapters in use stay. Tiny LLaVA, real PEFT adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from vitdemo.chat import conversation
from vitdemo.core.engine import KEEP, Engine
from vitdemo.core.loading import load_model
from vitdemo.errors import ModelLoadError

from adapters import save_lora

GEN = conversation.GenerationSettings(max_new_tokens=8)
IMAGE = Image.new("RGB", (48, 40), "red")


@pytest.fixture(scope="module")
def folders(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("adapters")
    return [str(save_lora(tiny_llava_dir, root / f"job{i}" / "adapter", seed=i + 1)) for i in range(4)]


def _answer(engine: Engine, adapter: object) -> str:
    return conversation.answer(engine, [conversation.user_message("What is red?", n_images=1)], [IMAGE], GEN,
                               adapter=adapter)


def _in_peft(engine: Engine) -> int:
    """Adapters the PeftModel really holds (configs and LoRA weights)."""
    peft = engine._peft
    if peft is None:  # unloaded: no LoRA layer is left in the model either
        assert not any(hasattr(m, "lora_A") for m in engine.model.modules())
        return 0
    names = set(peft.peft_config)
    layers = {n for m in peft.modules() if hasattr(m, "lora_A") for n in m.lora_A}
    assert layers <= names, (layers, names)
    return len(names)


def test_least_recently_used_adapter_is_unloaded_and_reloads_the_same(tiny_llava_dir: Path,
                                                                      folders: list[str]) -> None:
    engine = Engine(load_model(tiny_llava_dir), max_adapters=2)
    a, b, c = folders[:3]
    first = {p: _answer(engine, p) for p in (a, b)}
    assert first[a] != first[b]
    assert _answer(engine, a) == first[a]  # a used again: b is now the least recently used
    answer_c = _answer(engine, c)
    assert engine.loaded_adapters == [a, c] and _in_peft(engine) == 2
    assert _answer(engine, b) == first[b]  # loaded again from its folder: the same weights
    assert engine.loaded_adapters == [c, b] and _in_peft(engine) == 2
    assert _answer(engine, c) == answer_c and _answer(engine, None) != answer_c


def test_server_default_is_never_unloaded(tiny_llava_dir: Path, folders: list[str]) -> None:
    engine = Engine(load_model(tiny_llava_dir), max_adapters=2)
    a = folders[0]
    engine.use_adapter(a)
    default_answer = _answer(engine, KEEP)
    for other in folders[1:]:
        _answer(engine, other)
    assert a in engine.loaded_adapters and len(engine.loaded_adapters) == 2
    assert _answer(engine, KEEP) == default_answer


def test_adapter_whose_folder_was_removed_is_dropped(tiny_llava_dir: Path, folders: list[str],
                                                     tmp_path: Path) -> None:
    engine = Engine(load_model(tiny_llava_dir))
    pruned = str(shutil.copytree(Path(folders[0]), tmp_path / "job" / "adapter"))
    base = _answer(engine, None)
    assert _answer(engine, pruned) != base
    shutil.rmtree(tmp_path / "job")  # what jobs.prune_jobs does to an old job
    assert _answer(engine, None) == base  # any next request drops it
    assert engine.loaded_adapters == [] and _in_peft(engine) == 0
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        _answer(engine, pruned)
    assert _answer(engine, folders[1]) != base  # the PeftModel still takes new adapters


def test_adapters_used_in_the_current_lock_hold_stay(tiny_llava_dir: Path, folders: list[str]) -> None:
    """A generation (or a batch being set up) holds the lock: its adapters are not pulled from under it."""
    engine = Engine(load_model(tiny_llava_dir), max_adapters=1)
    a, b = folders[:2]
    with engine.locked(adapter=a):
        engine._switch(b)  # a second adapter within the same hold: one over the limit, a stays
        assert sorted(engine.loaded_adapters) == sorted([a, b])
    _answer(engine, b)  # the next hold brings it back to the limit
    assert engine.loaded_adapters == [b] and _in_peft(engine) == 1


def test_the_limit_is_a_setting(tmp_path: Path) -> None:
    import argparse

    from vitdemo.config import Settings, add_arguments
    from vitdemo.errors import InputError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = Settings.from_args(parser.parse_args(["--max-loaded-adapters", "3", "--home", str(tmp_path)]),
                                  {"VITDEMO_MAX_LOADED_ADAPTERS": "5"})
    assert settings.max_loaded_adapters == 3 and Settings(home=tmp_path).max_loaded_adapters == 8
    assert Engine.load_in_background(settings, start=False).max_adapters == 3
    with pytest.raises(InputError, match="max_loaded_adapters"):
        Settings.from_env({"VITDEMO_MAX_LOADED_ADAPTERS": "0"})
