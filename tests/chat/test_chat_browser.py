"""The Chat tab in Chromium (issue 18): a refused, too-long question leaves no trace in the
history; a question without an image gets a hint; Regenerate samples anew and shows its
seed; a quiet Stop button; the header names the model without the server's path."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from PIL import Image

from vitdemo.config import Settings
from webapp import browser_page, free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def chat_url(tiny_llava_dir: Path, tmp_path: Path):
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    engine = Engine(load_model(tiny_llava_dir))
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=6, home=tmp_path / "home")
    with serve(settings, engine) as url:
        yield url


def _send(page, text: str, image: str | None = None) -> None:
    box = page.locator("#vitdemo-input")
    if image:
        box.locator("input[type=file]").set_input_files(image)
        box.locator("img").first.wait_for(timeout=30_000)
    box.locator("textarea").fill(text)
    box.locator("textarea").press("Enter")


def _wait_idle(page) -> None:
    page.wait_for_function("!document.querySelector('#vitdemo-input textarea').disabled", timeout=60_000)
    time.sleep(0.5)


def test_chat_refusals_hints_and_seeds(chat_url: str, tiny_llava_dir: Path, tmp_path: Path, artifacts_dir: Path,
                                       capfd) -> None:
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 48), "red").save(picture)
    too_long = "red " * 700  # the tiny model reads 512 tokens
    with browser_page(1200, 1000) as page:
        page.goto(chat_url)
        page.locator("#vitdemo-input").wait_for(timeout=60_000)
        # The header: a short name, not the server's folder.
        page.get_by_text("Model:").first.wait_for(timeout=30_000)
        header = page.get_by_text("Model:").first.inner_text()
        assert str(tiny_llava_dir) not in header and tiny_llava_dir.name in header, header
        # Stop is not the red "stop" variant while nothing runs.
        stop_class = page.locator("#vitdemo-stop").get_attribute("class") or ""
        assert not re.search(r"\bstop\b", stop_class), stop_class

        chat = page.locator("#vitdemo-chatbot")
        _send(page, "What is it?", str(picture))
        page.wait_for_function("document.querySelectorAll('#vitdemo-chatbot .bot').length === 1", timeout=60_000)
        _wait_idle(page)

        # A question longer than the model reads: refused with that reason, not kept.
        _send(page, too_long)
        page.get_by_text("the question is too long").first.wait_for(timeout=60_000)
        _wait_idle(page)
        page.screenshot(path=str(artifacts_dir / "chat_too_long.png"), full_page=True)
        assert chat.get_by_text("red red red red").count() == 0, "the refused question stayed in the history"
        assert page.locator("#vitdemo-input textarea").input_value().strip() == too_long.strip()
        # The next question is answered (it used to fail until Undo or Clear).
        page.locator("#vitdemo-input textarea").fill("")
        _send(page, "And now?")
        page.wait_for_function("document.querySelectorAll('#vitdemo-chatbot .bot').length === 2", timeout=60_000)
        _wait_idle(page)
        assert "⚠️" not in chat.locator(".bot").last.inner_text()

        # No image in the conversation: a hint beside the answer.
        page.locator("#vitdemo-clear").click()
        page.wait_for_function("document.querySelectorAll('#vitdemo-chatbot .bot').length === 0", timeout=20_000)
        _send(page, "What colour is the circle?")
        chat.locator(".bot").get_by_text("upload an image").wait_for(timeout=60_000)
        _wait_idle(page)

        page.screenshot(path=str(artifacts_dir / "chat_no_image_hint.png"), full_page=True)

        # Sampling: each Regenerate is a new sample with its seed shown.
        from playwright.sync_api import expect

        page.get_by_text("Generation settings").click()
        temperature = page.get_by_label("number input for Temperature (0 = greedy, repeatable)")
        for _ in range(5):  # a value typed while the opening accordion wires its box is lost: then
            temperature.fill("2")  # the answers stay greedy and show no seed (the earlier misses)
            temperature.press("Enter")
            page.wait_for_timeout(500)
            if temperature.input_value() == "2":
                break
        expect(temperature).to_have_value("2")
        seeds: list[str] = []
        for _ in range(3):
            page.locator("#vitdemo-regenerate").click()
            deadline = time.time() + 120  # a loaded machine (CI beside other jobs) answers slowly
            while time.time() < deadline:  # until a seed not seen before is shown
                found = re.search(r"seed (\d+)", chat.locator(".bot").last.inner_text())
                if found and found.group(1) not in seeds:
                    break
                time.sleep(0.3)
            assert found and found.group(1) not in seeds, (seeds, chat.locator(".bot").last.inner_html()[:3000])
            seeds.append(found.group(1))
            _wait_idle(page)
        page.screenshot(path=str(artifacts_dir / "chat_seed.png"), full_page=True)
        assert len(set(seeds)) == 3, seeds
    logs = capfd.readouterr()
    assert "Traceback" not in logs.out + logs.err, (logs.out + logs.err)[-3000:]
