"""Per-session memory stays bounded: the server keeps at most --max-sessions sessions.

Every browser tab or API client is a session; the library keeps a copy of the page's
config and every gr.State per session. A public link visited all day must not grow
without bound, so the least recently used sessions are dropped past the limit."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitdemo.config import Settings
from vitdemo.engine import Engine
from vitdemo.models.loading import load_model
from vitdemo.ui.app import build_ui, launch
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
