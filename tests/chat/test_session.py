"""The per-user chat session behind the Chat tab and the /chat API (no Gradio)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from vitdemo.chat.conversation import GenerationSettings
from vitdemo.core.engine import Engine
from vitdemo.errors import ImageError, InputError
from vitdemo.chat.session import ChatSession, history_to_session

GEN = GenerationSettings(max_new_tokens=6)


def test_turns_regenerate_undo_and_display(engine: Engine, red_png: str) -> None:
    s = ChatSession()
    s.add_user_message("What is it?", [red_png])
    first = list(s.stream_reply(engine, GEN))
    assert first and first[-1].strip() == s.turns[-1].answer
    answer = s.turns[-1].answer
    s.add_user_message("And now?", [])
    list(s.stream_reply(engine, GEN))
    conv, images = s.conversation()
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert conv[1]["content"][0]["text"] == answer and len(images) == 1
    shown = s.chatbot_messages()
    assert shown[0] == {"role": "user", "content": {"path": red_png}}
    assert [m["role"] for m in shown] == ["user", "user", "assistant", "user", "assistant"]
    # Greedy regenerate gives the same answer back.
    second = s.turns[-1].answer
    s.prepare_regenerate()
    assert s.turns[-1].answer == ""
    list(s.stream_reply(engine, GEN))
    assert s.turns[-1].answer == second
    undone = s.undo()
    assert undone is not None and undone.text == "And now?" and len(s.turns) == 1
    s.clear()
    assert s.turns == [] and s.chatbot_messages() == []


def test_bad_messages_leave_history_unchanged(red_png: str, tmp_path: Path) -> None:
    s = ChatSession()
    with pytest.raises(InputError, match="empty"):
        s.add_user_message("   ", [red_png])
    with pytest.raises(InputError, match="3 images in one message; the limit is 2"):
        s.add_user_message("Hi", [red_png] * 3, max_images=2)
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"%PDF-1.4 not an image")
    with pytest.raises(ImageError, match="fake.jpg"):
        s.add_user_message("Hi", [str(fake)])
    with pytest.raises(InputError, match="nothing to regenerate"):
        s.prepare_regenerate()
    assert s.turns == []


def test_generation_error_is_recorded_on_the_turn(engine: Engine, red_png: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vitdemo.errors import GenerationError

    s = ChatSession()
    s.add_user_message("Hi", [red_png])
    monkeypatch.setattr(engine.model, "generate", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(GenerationError):
        list(s.stream_reply(engine, GEN))
    assert "out of memory" in s.turns[-1].error
    assert "⚠️" in s.chatbot_messages()[-1]["content"]
    monkeypatch.undo()
    list(s.stream_reply(engine, GEN))  # retry works and clears the error
    assert s.turns[-1].error is None and s.turns[-1].answer


def test_sessions_are_independent_copies(red_png: str) -> None:
    template = ChatSession()
    a, b = copy.deepcopy(template), copy.deepcopy(template)
    a.add_user_message("Hi", [red_png])
    assert b.turns == [] and a.stop_event is not b.stop_event


def test_api_history_formats(red_png: str) -> None:
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    s = history_to_session(msgs, red_png, "q2")
    assert [(t.text, t.answer, len(t.images)) for t in s.turns] == [("q1", "a1", 1), ("q2", "", 0)]
    s2 = history_to_session([["q1", "a1"]], red_png, "q2")
    assert [(t.text, t.answer) for t in s2.turns] == [("q1", "a1"), ("q2", "")]
    s3 = history_to_session(None, red_png, "q")
    assert len(s3.turns) == 1 and len(s3.turns[0].images) == 1
    with pytest.raises(InputError, match="role"):
        history_to_session([{"role": "system", "content": "x"}], red_png, "q")
    with pytest.raises(InputError, match="must follow a user"):
        history_to_session([{"role": "assistant", "content": "x"}], red_png, "q")
