"""A model's generation config caps the length of every answer (the classroom model declares
what its longest answer needs, so an off-world picture cannot make it babble)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from PIL import Image

from vitdemo.attention.attend import stream_with_maps
from vitdemo.chat.conversation import AnswerStats, GenerationSettings, stream_answer, user_message
from vitdemo.core.engine import Engine

CAP = 3


@pytest.fixture()
def capped(engine: Engine) -> Iterator[Engine]:
    config = engine.model.generation_config
    before = config.max_new_tokens
    config.max_new_tokens = CAP
    yield engine
    config.max_new_tokens = before


def _answer_tokens(engine: Engine) -> int:
    stats = AnswerStats()
    conversation = [user_message("What is it?", n_images=1)]
    list(stream_answer(engine, conversation, [Image.new("RGB", (40, 30), "grey")],
                       GenerationSettings(max_new_tokens=12), stats=stats))
    return stats.new_tokens


def test_chat_answers_stop_at_the_models_cap(engine: Engine) -> None:
    uncapped = _answer_tokens(engine)
    assert uncapped > CAP  # the tiny model rambles on when nothing stops it
    config = engine.model.generation_config
    before, config.max_new_tokens = config.max_new_tokens, CAP
    try:
        assert _answer_tokens(engine) == CAP
    finally:
        config.max_new_tokens = before


def test_attention_answers_stop_at_the_models_cap(capped: Engine) -> None:
    events = list(stream_with_maps(capped, [user_message("What is it?", n_images=1)],
                                   [Image.new("RGB", (40, 30), "grey")], GenerationSettings(max_new_tokens=12)))
    assert 0 < len([e for e in events if e.index is not None]) <= CAP


def test_a_longer_cap_or_none_keeps_the_requested_length() -> None:
    asked = GenerationSettings(max_new_tokens=20)
    assert asked.within_model_cap(SimpleNamespace(generation_config=SimpleNamespace(max_new_tokens=None))) is asked
    assert asked.within_model_cap(SimpleNamespace(generation_config=SimpleNamespace(max_new_tokens=64))) is asked
    assert asked.within_model_cap(SimpleNamespace()) is asked
    assert asked.within_model_cap(SimpleNamespace(
        generation_config=SimpleNamespace(max_new_tokens=5))).max_new_tokens == 5
