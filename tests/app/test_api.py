"""The public API: exactly the documented endpoints, and /attend end to end on the tiny LLaVA."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from webapp import free_port, serve

DOCUMENTED = ["/attend", "/chat"]  # README.md, section API


@pytest.fixture(scope="module")
def url(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=6, home=home,
                        max_image_pixels=1_000_000)
    with serve(settings, Engine(load_model(tiny_llava_dir))) as u:
        yield u


@pytest.fixture(scope="module")
def red(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "red.png"
    img = Image.new("RGB", (64, 64), "white")
    img.paste(Image.new("RGB", (32, 32), "red"), (8, 8))
    img.save(path)
    return str(path)


def test_gradio_client_sees_only_the_documented_endpoints(url: str) -> None:
    from gradio_client import Client

    api = Client(url, verbose=False).view_api(print_info=False, return_format="dict")
    assert sorted(api["named_endpoints"]) == DOCUMENTED
    assert api["unnamed_endpoints"] == {}
    attend = api["named_endpoints"]["/attend"]
    assert [p["parameter_name"] for p in attend["parameters"]] == ["image", "question"]


def test_attend_answers_with_a_map_per_answer_token(url: str, red: str, tiny_llava_dir: Path) -> None:
    from gradio_client import Client, handle_file

    from vitdemo.attention.attend import attend_json
    from vitdemo.chat.conversation import GenerationSettings
    from vitdemo.core.images import open_image

    out = Client(url, verbose=False).predict(handle_file(red), "What is red?", api_name="/attend")
    assert out["tokens"] and len(out["maps"]) == len(out["tokens"])
    (rows, cols), = out["grid"]
    for grid_map in out["maps"]:
        assert len(grid_map) == rows and all(len(row) == cols for row in grid_map)
        assert min(min(row) for row in grid_map) >= 0.0
    # The same JSON as `attend --json` (the same function, same greedy answer).
    same = attend_json(Engine(load_model(tiny_llava_dir)), [open_image(red)], "What is red?",
                       GenerationSettings(max_new_tokens=6))
    assert out == same


@pytest.mark.parametrize("args, expected", [
    (("text", ""), "question is empty"),
    (("text", "What is red?"), None),  # the image argument is replaced below: a text file
    (("big", "What is red?"), "1,000,000"),
    (("red", "What is red? " * 1500), "the question is too long"),  # the Attention tab's length check
])
def test_attend_bad_input_gives_a_clear_message(url: str, red: str, tmp_path: Path, args: tuple,
                                                expected: str | None) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    kind, question = args
    if kind == "red":
        path = Path(red)
    elif kind == "text":
        path = tmp_path / "notes.png"
        path.write_text("not a picture")
    else:
        path = tmp_path / "big.png"
        Image.new("RGB", (1200, 1000), "blue").save(path)
    client = Client(url, verbose=False)
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(path)), question, api_name="/attend")
    message = str(info.value)
    assert "Traceback" not in message and message.strip(), message
    if expected:
        assert expected in message, message
    else:
        assert "image" in message.lower(), message
    assert client.predict(handle_file(red), "What is red?", api_name="/attend")["tokens"]  # still serving


def test_chat_streams_the_answer_growing_and_sends_the_whole_answer_once(url: str, red: str) -> None:
    from gradio_client import Client, handle_file

    job = Client(url, verbose=False).submit(handle_file(red), "What is red?", None, api_name="/chat")
    answer = job.result(timeout=120)
    values = job.outputs()
    assert answer and values[-1] == answer == answer.strip()
    assert all(later.startswith(earlier.strip()) for earlier, later in zip(values, values[1:]))
    assert len(values) == len(set(values))  # no message repeats the one before (each costs the server)
