"""Per-session memory stays bounded: the server keeps at most --max-sessions sessions.

Every browser tab or API client is a session; the library keeps a copy of the page's
config and every gr.State per session. A public link visited all day must not grow
without bound, so the least recently used sessions are dropped past the limit."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from vitdemo.ui.app import build_ui, launch
from relserver import page_client
from webapp import free_port


def test_least_recently_used_sessions_go_past_the_limit(tiny_llava_dir: Path, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    red = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(red)
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=2, max_sessions=3,
                        home=tmp_path / "home")
    demo = build_ui(settings, Engine(load_model(tiny_llava_dir)))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{settings.port}/"
        clients = [Client(url, verbose=False) for _ in range(6)]
        for client in clients:
            assert client.predict(handle_file(str(red)), "What is red?", None, api_name="/chat").strip()
        kept = set(demo.state_holder.session_data)
        assert len(kept) == 3, kept
        assert {c.session_hash for c in clients[-3:]} == kept  # the newest stay
        # A dropped session is not an error: its next request simply starts afresh.
        assert clients[0].predict(handle_file(str(red)), "And now?", None, api_name="/chat").strip()
    finally:
        demo.close()


def test_queue_keeps_a_bounded_record_of_events(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """Gradio's queue records every event for its monitoring page; the app bounds that record."""
    from vitdemo.ui import app

    demo = build_ui(Settings(model=str(tiny_llava_dir), home=tmp_path), Engine(load_model(tiny_llava_dir)))
    assert demo._queue.ANALYTICS_MAX_EVENTS == app.ANALYTICS_MAX_EVENTS  # not the library's 10000
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY >= 100  # (sic) the summary is not rebuilt per event


def test_asking_again_and_again_does_not_grow_a_session(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """Each gr.update() makes Gradio keep one more component copy in the session's config
    (5 per answer in the Attention tab before: the soak's memory crept up by ~60 KB per
    request). The tab now sends new dropdown choices only when they change."""
    from gradio_client import handle_file

    red = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(red)
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=3, home=tmp_path / "home")
    demo = build_ui(settings, Engine(load_model(tiny_llava_dir)))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = page_client(f"http://127.0.0.1:{settings.port}/")  # /on_ask: the page's own event

        def ask() -> None:
            out = client.predict(handle_file(str(red)), None, "What is red?", 3, api_name="/on_ask")
            assert out[2]  # the answer's words
            client.predict(api_name="/on_vision_choices")  # what the page runs after each answer

        ask()
        ask()  # the first choices update leaves one copy per dropdown, once per session
        session = demo.state_holder.session_data[client.session_hash]
        settled = (len(session.blocks_config.blocks), len(session.config_values))
        for _ in range(4):
            ask()
        assert (len(session.blocks_config.blocks), len(session.config_values)) == settled
    finally:
        demo.close()
