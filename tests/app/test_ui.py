"""The web app: build_ui() launched on a free port, driven by gradio_client and a real browser."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from vitdemo.config import Settings
from webapp import CHROMIUM, CHROMIUM_ARGS, free_port
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model



@pytest.fixture(scope="module")
def app_engine(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.fixture(scope="module")
def app_url(app_engine: Engine, tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from vitdemo.ui.app import build_ui, launch

    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=12,
                        home=tmp_path_factory.mktemp("home"))
    demo = build_ui(settings, app_engine)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    img = Image.new("RGB", (96, 96), "white")
    img.paste((220, 40, 40), (10, 10, 40, 40))
    img.paste((40, 80, 220), (50, 50, 90, 90))
    img.save(path)
    return str(path)


def test_page_is_served_without_ssr(app_url: str) -> None:
    import httpx

    r = httpx.get(app_url, timeout=30)
    assert r.status_code == 200 and "vitdemo" in r.text
    config = httpx.get(app_url + "config", timeout=30).json()
    assert config.get("analytics_enabled") is False


def test_api_chat_answers_and_streams(app_url: str, scene_png: str) -> None:
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    answer = client.predict(handle_file(scene_png), "What is red?", api_name="/chat")
    assert isinstance(answer, str) and answer.strip()
    # Same question again: greedy, so the same answer.
    assert client.predict(handle_file(scene_png), "What is red?", None, api_name="/chat") == answer
    # Streaming: the job yields growing prefixes of the answer.
    job = client.submit(handle_file(scene_png), "What is red?", None, api_name="/chat")
    outputs = [o for o in job]
    assert outputs and outputs[-1] == answer
    assert len(outputs) >= 2 and all(answer.startswith(o.strip()) for o in outputs)


def test_api_chat_multi_turn_with_history(app_url: str, app_engine: Engine, scene_png: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client import Client, handle_file

    prompts: list[str] = []
    template = app_engine.processor.apply_chat_template

    def spy(*args, **kwargs):
        prompts.append(template(*args, **kwargs))
        return prompts[-1]

    monkeypatch.setattr(app_engine.processor, "apply_chat_template", spy)
    client = Client(app_url, verbose=False)
    first = client.predict(handle_file(scene_png), "What is red?", None, api_name="/chat")
    history = [{"role": "user", "content": "What is red?"}, {"role": "assistant", "content": first}]
    second = client.predict(handle_file(scene_png), "And where is it?", history, api_name="/chat")
    assert isinstance(second, str) and second.strip()
    # The second prompt holds the whole conversation, with the image in the first turn.
    assert prompts[-1] == (f"USER: <image>\nWhat is red?\nASSISTANT: {first}</s>\n"
                           "USER: And where is it?\nASSISTANT:")


@pytest.mark.parametrize("question,file_text,match", [
    ("What?", "this is a text file, not an image", "not an image"),
    ("   ", None, "empty"),
])
def test_api_bad_input_gives_clear_error_and_server_keeps_serving(
        app_url: str, scene_png: str, tmp_path: Path, question: str, file_text: str | None, match: str) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    path = scene_png
    if file_text is not None:
        path = str(tmp_path / "notes.png")
        Path(path).write_text(file_text)
    with pytest.raises(AppError, match=match):
        client.predict(handle_file(path), question, None, api_name="/chat")
    assert client.predict(handle_file(scene_png), "Still there?", None, api_name="/chat").strip()


@pytest.mark.browser
def test_browser_upload_ask_see_answer(app_url: str, scene_png: str, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#vitdemo-input")
            expect(box).to_be_visible(timeout=60_000)
            box.locator("input[type=file]").set_input_files(scene_png)
            # The upload shows a thumbnail in the textbox before we send.
            expect(box.locator("img")).to_have_count(1, timeout=30_000)
            box.locator("textarea").fill("What colour is the square?")
            box.locator("textarea").press("Enter")
            chat = page.locator("#vitdemo-chatbot")
            expect(chat.get_by_text("What colour is the square?")).to_be_visible(timeout=30_000)
            bot = chat.locator(".bot")
            expect(bot.last).to_be_visible(timeout=60_000)
            # Streaming ends when the input is enabled again.
            expect(box.locator("textarea")).to_be_enabled(timeout=60_000)
            time.sleep(0.5)
            text = bot.last.inner_text().strip()
            assert text, "the answer is empty in the page"
            expect(chat.locator("img")).to_have_count(1)  # the uploaded image is in the chat
            page.screenshot(path=str(artifacts_dir / "chat.png"), full_page=True)
            # Clear empties the chat.
            page.locator("#vitdemo-clear").click()
            expect(chat.get_by_text("What colour is the square?")).to_have_count(0, timeout=10_000)
            # An image with no question: a clear message, nothing sent. (A new file name:
            # the browser ignores choosing the same file twice.)
            other = artifacts_dir / "scene-copy.png"
            shutil.copy(scene_png, other)
            box.locator("input[type=file]").set_input_files(str(other))
            expect(box.locator("img")).to_have_count(1, timeout=30_000)
            box.locator("textarea").press("Enter")
            expect(page.get_by_text("the message is empty").first).to_be_visible(timeout=10_000)
            expect(page.get_by_text("Error", exact=True)).to_have_count(0)  # a toast, no overlay
            page.screenshot(path=str(artifacts_dir / "chat-empty-message.png"))
            expect(chat.locator(".bot")).to_have_count(0)
        finally:
            browser.close()


@pytest.mark.browser
def test_browser_stop_button_stops_generation(app_url: str, app_engine: Engine, scene_png: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    lengths: list[int] = []
    generate = app_engine.model.generate

    def recorded(*args, **kwargs):
        out = generate(*args, **kwargs)
        lengths.append(int(out.shape[-1] - kwargs["input_ids"].shape[-1]))
        return out

    monkeypatch.setattr(app_engine.model, "generate", recorded)
    forward = app_engine.model.forward

    @functools.wraps(forward)  # generate() reads forward's signature
    def slow_forward(*args, **kwargs):  # >= 10 s for 1000 tokens, so Stop always comes first
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(app_engine.model, "forward", slow_forward)
    monkeypatch.setattr(app_engine.model.generation_config, "min_new_tokens", 1000)  # no early EOS
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#vitdemo-input")
            expect(box).to_be_visible(timeout=60_000)
            page.get_by_text("Generation settings").click()
            tokens = page.get_by_label("number input for Max new tokens")
            tokens.fill("1000")
            tokens.press("Tab")
            box.locator("input[type=file]").set_input_files(scene_png)
            expect(box.locator("img")).to_have_count(1, timeout=30_000)
            box.locator("textarea").fill("Talk for a long time.")
            box.locator("textarea").press("Enter")
            bot = page.locator("#vitdemo-chatbot .bot")
            expect(bot.last).not_to_have_text("", timeout=60_000)
            page.locator("#vitdemo-stop").click()
            expect(box.locator("textarea")).to_be_enabled(timeout=60_000)
            deadline = time.time() + 30
            while not lengths and time.time() < deadline:
                time.sleep(0.1)
        finally:
            browser.close()
    assert lengths and lengths[-1] < 1000, f"Stop did not stop generation: {lengths}"
    assert not app_engine.lock.locked()
