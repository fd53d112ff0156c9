"""Limits a classroom cannot break: hostile chat input, oversized images, the answer-length
cap, a bounded queue that says it is full at once, one generation at a time, temp-file TTL.
A real app on loopback driven by raw HTTP (the page's own private events) and gradio_client."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import pytest

import relserver as rs
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from webapp import free_port, serve

MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def engine(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.fixture(scope="module")
def url(engine: Engine, tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=4, max_new_tokens_cap=64,
                        max_images_per_message=2, max_image_pixels=MAX_PIXELS,
                        home=tmp_path_factory.mktemp("home"))
    with serve(settings, engine) as u:
        yield u


@pytest.fixture(scope="module")
def pics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pics")
    out = {"red": rs.scene(folder / "red.png", "red"), "blue": rs.scene(folder / "blue.png", "blue")}
    # A 40000x40000 PNG of zeros: 1.5 MB on disk, 1.6 G pixels decoded.
    raw = zlib.compressobj(9)
    row = b"\0" * (40000 + 1)
    idat = b"".join(raw.compress(row) for _ in range(40000)) + raw.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    bomb = folder / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    out["bomb"] = str(bomb)
    big = folder / "big.png"  # 1200x1000 = 1.2 MP: a real photo size, above this server's 1 MP limit
    from PIL import Image

    Image.new("RGB", (1200, 1000), "green").save(big)
    out["big"] = str(big)
    return out


def _still_serving(url: str, red: str) -> None:
    from gradio_client import Client, handle_file

    assert Client(url, verbose=False).predict(handle_file(red), "What colour?", None, api_name="/chat").strip()


def _add_then_generate(url: str, message: dict, n_tokens: int = 4) -> tuple[str | None, list[dict]]:
    """The Chat tab's own events: add_message, then generate in the same session.

    Returns (error of add_message or None, SSE messages of generate)."""
    session = "limits" + str(time.monotonic_ns())
    added = rs.call(url, rs.fn_index(url, "add_message"), [message, None], session_hash=session)
    err = rs.error_text(added)
    if err is not None:
        return err, []
    with rs.sse(url, rs.fn_index(url, "generate"), [None, n_tokens, 0.0, 1.0, 0, None], session_hash=session) as msgs:
        return None, list(msgs)


@pytest.mark.parametrize("case", ["empty", "blank", "too_many_images"])
def test_hostile_chat_messages_are_refused_and_the_server_keeps_serving(url: str, pics: dict[str, str],
                                                                       case: str) -> None:
    from vitdemo.errors import InputError
    from vitdemo.chat.session import ChatSession

    red = rs.upload(url, pics["red"])
    message, expected = {
        "empty": ({"text": "", "files": [red]}, "the message is empty"),
        "blank": ({"text": " \n\t ", "files": []}, "the message is empty"),
        "too_many_images": ({"text": "Compare them", "files": [red] * 3}, "3 images in one message; the limit is 2"),
    }[case]
    # The Chat tab's own event refuses it: the chat window is left as it was (the toast with
    # the message is checked in the browser by tests/test_ui.py) and no generation runs.
    session = f"hostile-{case}-{time.monotonic_ns()}"
    added = rs.call(url, rs.fn_index(url, "add_message"), [message, None], session_hash=session)
    assert added.get("success") is True and added["output"]["data"][1] == {"__type__": "update"}, added
    generated = rs.call(url, rs.fn_index(url, "generate"), [None, 4, 0.0, 1.0, 0, None], session_hash=session)
    assert generated["output"]["data"][1] == {"__type__": "update"}, generated
    # The message the toast shows comes from the session's own check.
    with pytest.raises(InputError, match=expected):
        ChatSession().add_user_message(message["text"], [pics["red"]] * len(message["files"]), max_images=2)
    # Through the API: the same message as an error.
    if case != "too_many_images":
        from gradio_client import Client, handle_file
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match=expected):
            Client(url, verbose=False).predict(handle_file(pics["red"]), message["text"], None, api_name="/chat")
    _still_serving(url, pics["red"])


def test_100kb_message_gets_a_clear_message(url: str, pics: dict[str, str]) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    text = ("Describe every detail of the picture please. " * 2300)[:100_000]
    assert len(text.encode()) == 100_000
    # Through the Chat tab: a warning with the numbers that says the question itself is too
    # long; the refused question does not stay in the history (it blocked every later one).
    err, msgs = _add_then_generate(url, {"text": text, "files": [rs.upload(url, pics["red"])]})
    assert err is None
    warnings = [m.get("log", "") for m in msgs if m.get("msg") == "log"]
    assert any("the question is too long" in w and "the model's context is" in w for w in warnings), msgs[-3:]
    chatbot = msgs[-1]["output"]["data"][1]
    assert text[:200] not in str(chatbot)
    # Through the API: the same message as an error.
    start = time.monotonic()
    with pytest.raises(AppError, match=r"tokens, the model's context is \d+"):
        Client(url, verbose=False).predict(handle_file(pics["red"]), text, None, api_name="/chat")
    assert time.monotonic() - start < 30
    _still_serving(url, pics["red"])


@pytest.mark.parametrize("which", ["bomb", "big"])
def test_oversized_images_refused_in_chat_and_attention(url: str, pics: dict[str, str], which: str) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = rs.page_client(url)  # /on_ask is the page's own event
    for api, args in (("/chat", (handle_file(pics[which]), "What is it?", None)),):
        start = time.monotonic()
        with pytest.raises(AppError) as info:
            client.predict(*args, api_name=api)
        elapsed = time.monotonic() - start
        message = str(info.value)
        assert "pixels" in message and "Traceback" not in message, f"{api}: {message}"
        if which == "big":  # our own check, with the numbers and what to do
            assert "1200x1000 = 1,200,000 pixels; the limit is 1,000,000" in message, f"{api}: {message}"
        assert elapsed < 10, f"{api} took {elapsed:.1f}s to refuse {which}"
    # The Attention tab's own event: a warning toast (the page keeps its earlier outputs),
    # not an error; the same message.
    start = time.monotonic()
    with rs.sse(url, rs.fn_index(url, "on_ask"), [rs.upload(url, pics[which]), None, "What is it?", 4,
                                                  "middle layers", "all heads", "image 1", "jet", 0.5, False,
                                                  None, None, None]) as messages:
        msgs = list(messages)
    warnings = " ".join(m.get("log", "") for m in msgs if m.get("msg") == "log" and m.get("level") == "warning")
    assert "pixels" in warnings and "Traceback" not in str(msgs), msgs[-3:]
    if which == "big":
        assert "1200x1000 = 1,200,000 pixels; the limit is 1,000,000" in warnings, warnings
    assert rs.error_text(msgs[-1]) is None, msgs[-1]
    assert time.monotonic() - start < 10
    _still_serving(url, pics["red"])


def test_answer_length_cap_is_enforced_server_side(url: str, pics: dict[str, str]) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    # The attention tab's slider stops at 256; a forged 5000 is refused by the server.
    with pytest.raises(AppError, match="5000"):
        rs.page_client(url).predict(handle_file(pics["red"]), None, "What?", 5000, api_name="/on_ask")
    # The chat settings slider stops at max_new_tokens_cap (64 here).
    err, msgs = _add_then_generate(url, {"text": "Talk", "files": []}, n_tokens=65)
    assert err is None and msgs and rs.error_text(msgs[-1]) is not None and "64" in rs.error_text(msgs[-1])


def test_one_generation_at_a_time(url: str, engine: Engine, pics: dict[str, str]) -> None:
    """Four chat users and one attention user at once: the model never runs two forwards together."""
    from gradio_client import handle_file

    answers: dict[str, object] = {}

    def ask(name: str, api: str, args: tuple) -> None:
        try:
            answers[name] = rs.page_client(url).predict(*args, api_name=api)
        except Exception as err:  # noqa: BLE001 - recorded and asserted below
            answers[name] = err

    with rs.ForwardSpy(engine.model, delay_s=0.02) as spy:
        threads = [threading.Thread(target=ask, args=(f"chat{i}", "/chat",
                                                      (handle_file(pics["red"]), f"Question {i}?", None)))
                   for i in range(4)]
        threads.append(threading.Thread(target=ask, args=("attention", "/on_ask",
                                                          (handle_file(pics["blue"]), None, "What?", 4))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not any(isinstance(a, Exception) for a in answers.values()), answers
    assert len(answers) == 5 and spy.calls >= 5
    assert spy.max_active == 1, f"{spy.max_active} forwards ran at once"


@pytest.mark.slow
def test_full_queue_says_so_at_once(engine: Engine, tiny_llava_dir: Path, tmp_path: Path, pics: dict[str, str]) -> None:
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=8, queue_size=2, concurrency=1,
                        home=tmp_path)
    with serve(settings, engine) as u, rs.ForwardSpy(engine.model, delay_s=0.5):
        fn = rs.fn_index(u, "chat")
        red = rs.upload(u, pics["red"])
        results: list[dict] = []
        workers = [threading.Thread(target=lambda: results.append(rs.call(u, fn, [red, "Slow?", None])))
                   for _ in range(3)]  # one runs (about 4 s), two wait: the queue is full
        for w in workers:
            w.start()
            time.sleep(0.3)
        time.sleep(1.0)
        start = time.monotonic()
        refused = rs.call(u, fn, [red, "One more?", None])
        elapsed = time.monotonic() - start
        for w in workers:
            w.join(timeout=120)
    text = str(refused)
    # How long to wait, not Gradio's bare "Queue is full" (vitdemo.ui.queue_limit).
    assert refused.get("msg") == "join_refused" and "The server is busy: 2 requests are waiting" in text, refused
    assert "Please try again in" in text, refused
    assert elapsed < 2.0, f"a full queue took {elapsed:.2f}s to say so"
    assert len(results) == 3 and all(rs.error_text(r) is None for r in results), results


def test_temp_files_have_a_time_to_live(engine: Engine, tiny_llava_dir: Path, tmp_path: Path) -> None:
    from vitdemo.ui.app import build_ui

    demo = build_ui(Settings(model=str(tiny_llava_dir), home=tmp_path), engine)
    frequency, age = demo.delete_cache
    assert 0 < frequency <= 3600 and 0 < age <= 24 * 3600, demo.delete_cache


def test_corrupt_deflate_stream_in_a_zip_is_a_dataset_error(tmp_path: Path) -> None:
    """Found by bench/fuzz_loaders.py: a damaged deflate stream raised zlib.error."""
    import io
    import zipfile

    from vitdemo.finetune.data.archive import extract_zip
    from vitdemo.errors import DatasetError

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train.jsonl", "".join(f'{{"image": "{i}.png", "question": "What?", "answer": "red"}}\n'
                                           for i in range(200)))
    data = bytearray(buf.getvalue())
    start = 30 + len("train.jsonl")  # the member's compressed bytes follow its local header
    for offset in range(start + 5, start + 40, 3):
        data[offset] ^= 0x5A
    path = tmp_path / "broken.zip"
    path.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(DatasetError, match="cannot be read|damaged"):
        extract_zip(path, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
