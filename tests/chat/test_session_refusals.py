"""What a new user hit in the Chat tab (issue 18): refused questions, no image, Regenerate."""

from __future__ import annotations


import pytest

from vitdemo.chat.conversation import GenerationSettings
from vitdemo.chat.session import EMPTY_ANSWER_NOTE, NO_IMAGE_HINT, ChatSession
from vitdemo.core.engine import Engine
from vitdemo.errors import InputError

GEN = GenerationSettings(max_new_tokens=4)
TOO_LONG = "red " * 700  # the tiny model reads 512 positions


def test_too_long_question_is_refused_and_leaves_the_history(engine: Engine, red_png: str) -> None:
    s = ChatSession()
    s.add_user_message("What is it?", [red_png])
    list(s.stream_reply(engine, GEN))
    s.add_user_message(TOO_LONG, [])
    with pytest.raises(InputError, match=r"the question is too long: \d+ tokens.*shorten the question"):
        list(s.stream_reply(engine, GEN))
    # The refused turn is gone (kept aside so the page can give its text back) ...
    assert len(s.turns) == 1 and s.refused is not None and s.refused.text == TOO_LONG.strip()
    assert all(TOO_LONG.strip() not in str(m["content"]) for m in s.chatbot_messages())
    # ... so the next, short question is answered instead of refused for the old one.
    s.add_user_message("And the colour?", [])
    assert list(s.stream_reply(engine, GEN))
    assert len(s.turns) == 2 and s.turns[-1].error is None


def test_long_history_is_told_apart_from_a_long_question(engine: Engine, red_png: str) -> None:
    s = ChatSession()
    for _ in range(2):
        s.add_user_message("red " * 300, [red_png])  # 328 tokens each, 512 together is too many
        s.turns[-1].answer = "red"
    with pytest.raises(InputError, match=r"the conversation is \d+ tokens.*this question alone is \d+.*clear the chat"):
        list(s.stream_reply(engine, GEN))


def test_no_image_gets_a_hint_beside_the_answer(engine: Engine, red_png: str) -> None:
    s = ChatSession()
    s.add_user_message("What colour is the circle?", [])
    list(s.stream_reply(engine, GEN))
    assert s.turns[-1].note == NO_IMAGE_HINT
    assert "upload an image" in s.chatbot_messages()[-1]["content"]
    with_image = ChatSession()
    with_image.add_user_message("What colour is it?", [red_png])
    list(with_image.stream_reply(engine, GEN))
    assert with_image.turns[-1].note is None


def test_regenerate_samples_anew_and_shows_the_seed(engine: Engine, red_png: str) -> None:
    sampling = GenerationSettings(max_new_tokens=12, temperature=2.0, seed=None)
    s = ChatSession()
    s.add_user_message("Describe it.", [red_png])
    answers, seeds = [], []
    for _ in range(4):
        s.prepare_regenerate() if s.turns[-1].answer else None
        list(s.stream_reply(engine, sampling))
        answers.append(s.turns[-1].answer)
        seeds.append(s.turns[-1].seed)
    assert len(set(seeds)) == 4 and None not in seeds
    assert len(set(answers)) > 1, answers  # a random 12-token sample at temperature 2
    assert f"seed {seeds[-1]}" in s.chatbot_messages()[-1]["content"]
    # The seed shown reproduces the answer.
    again = ChatSession()
    again.add_user_message("Describe it.", [red_png])
    list(again.stream_reply(engine, GenerationSettings(max_new_tokens=12, temperature=2.0, seed=seeds[-1])))
    assert again.turns[-1].answer == answers[-1]
    # Greedy answers have no seed to show.
    greedy = ChatSession()
    greedy.add_user_message("Describe it.", [red_png])
    list(greedy.stream_reply(engine, GEN))
    assert greedy.turns[-1].seed is None and "seed" not in greedy.chatbot_messages()[-1]["content"]


def test_an_answer_that_ends_before_its_first_word_still_shows_a_reply_and_its_seed(
        engine: Engine, red_png: str, monkeypatch) -> None:
    from vitdemo.chat import session as session_module

    monkeypatch.setattr(session_module.conversation, "stream_answer", lambda *args, **kwargs: iter(()))
    s = ChatSession()
    s.add_user_message("Describe it.", [red_png])
    list(s.stream_reply(engine, GenerationSettings(max_new_tokens=12, temperature=1.0, seed=5)))
    assert s.turns[-1].answer == "" and s.turns[-1].note == EMPTY_ANSWER_NOTE
    shown = s.chatbot_messages()[-1]
    assert shown["role"] == "assistant" and "before its first word" in shown["content"] and "seed 5" in shown["content"]
