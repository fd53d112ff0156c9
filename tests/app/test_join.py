"""The join address: found without sending anything, shown only beyond loopback, printed at
launch and on the page with a QR code (vitdemo.serving.join, vitdemo.ui.join)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from vitdemo.config import Settings
from vitdemo.serving import join


def test_join_url_only_beyond_loopback() -> None:
    assert join.join_url("127.0.0.1", 7860) is None
    assert join.join_url("localhost", 7860) is None
    assert join.join_url("0.0.0.0", 7860, lan="192.168.1.23") == "http://192.168.1.23:7860/"
    assert join.join_url("10.0.0.7", 8000) == "http://10.0.0.7:8000/"  # bound to one address: that one
    assert join.join_url("fd00::5", 7860) == "http://[fd00::5]:7860/"


def test_lan_address_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    class Recording(socket.socket):
        def send(self, *a: Any, **k: Any) -> int:
            sent.append("send")
            raise AssertionError("lan_address sent a packet")

        def sendto(self, *a: Any, **k: Any) -> int:
            sent.append("sendto")
            raise AssertionError("lan_address sent a packet")

    monkeypatch.setattr(join.socket, "socket", Recording)
    address = join.lan_address()
    assert not sent
    assert address is None or join._usable(address), address


def test_no_address_means_no_join_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(join, "lan_address", lambda: None)
    assert join.join_url("0.0.0.0", 7860) is None


def test_qr_code_is_a_square_black_and_white_image() -> None:
    image = join.qr_image("http://192.168.1.23:7860/")
    assert image.mode == "RGB" and image.width == image.height >= 100
    assert set(c for _, c in image.getcolors()) == {(0, 0, 0), (255, 255, 255)}


def test_loopback_page_has_no_join_panel(tiny_llava_dir: Path, tmp_path: Path) -> None:
    from vitdemo.ui.app import build_ui

    demo = build_ui(Settings(model=str(tiny_llava_dir), home=tmp_path), defer_load=True)
    assert not any(getattr(b, "elem_id", None) == "vitdemo-join" for b in demo.blocks.values())


@pytest.mark.browser
def test_join_address_printed_and_on_the_page(tiny_llava_dir: Path, tmp_path: Path, artifacts_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from vitdemo.ui.app import build_ui, launch
    from webapp import browser_page, free_port

    monkeypatch.setattr(join, "lan_address", lambda: "192.168.1.23")
    port = free_port()
    # Built as for `--host 0.0.0.0`, but the test server itself listens on loopback only.
    settings = Settings(model=str(tiny_llava_dir), host="0.0.0.0", port=port, auth="teacher:class", home=tmp_path)
    demo = build_ui(settings, defer_load=True)
    launch(demo, settings, prevent_thread_lock=True, server_name="127.0.0.1")
    try:
        assert f"Students join at: http://192.168.1.23:{port}/" in capsys.readouterr().out
        with browser_page(width=1100, height=700) as page:
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("input[type=text]").first.fill("teacher")
            page.locator("input[type=password]").fill("class")
            page.keyboard.press("Enter")
            panel = page.locator("#vitdemo-join")
            panel.wait_for(timeout=30000)
            assert f"http://192.168.1.23:{port}/" in panel.inner_text()
            # The QR code is a lazily loaded image: wait until it has pixels, not just a tag.
            page.wait_for_function("() => { const i = document.querySelector('#vitdemo-join-qr img');"
                                   " return i && i.complete && i.naturalWidth >= 100; }", timeout=60000)
            page.screenshot(path=str(artifacts_dir / "join-panel.png"))
    finally:
        demo.close()
