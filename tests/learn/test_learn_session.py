"""The Learn tab sends a dropdown's choices only when they change: no copy per request."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from vitdemo.ui.app import build_ui, launch
from relserver import page_client
from webapp import free_port


def test_opening_heads_again_and_again_does_not_grow_a_session(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """Section 1 ("Open the head", or picking a query token) sent gr.update(choices=...) every
    time: Gradio kept one more Dropdown copy in the session per request."""
    from gradio_client import handle_file

    red = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(red)
    settings = Settings(model=str(tiny_llava_dir), port=free_port(), home=tmp_path / "home")
    demo = build_ui(settings, Engine(load_model(tiny_llava_dir)))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = page_client(f"http://127.0.0.1:{settings.port}/")

        def open_head(question: str, query: int | None) -> dict:
            md, _, _, selector = client.predict(handle_file(str(red)), question, 1, 0, query, api_name="/on_inside")
            assert "Layer 1, head 0" in md
            return selector

        first = open_head("What is red?", None)
        assert first["choices"], first  # the first answer brings the query tokens
        last = first["choices"][-1][1]
        open_head("What is red?", last)  # the first update leaves one copy, once per session
        session = demo.state_holder.session_data[client.session_hash]
        settled = (len(session.blocks_config.blocks), len(session.config_values))
        for query in (last - 1, last, last - 1):  # picking other query tokens of the same question
            open_head("What is red?", query)
        assert (len(session.blocks_config.blocks), len(session.config_values)) == settled
        renewed = open_head("Where is the red square?", None)  # another question: new choices
        assert renewed["choices"] != first["choices"]
    finally:
        demo.close()
