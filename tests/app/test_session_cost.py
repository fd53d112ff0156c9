"""A cached component signature gives the same session config as Gradio computes without it."""

from __future__ import annotations

import gradio as gr
from gradio.state_holder import SessionState

from vitdemo.ui.session_cost import cache_init_signatures


def _page() -> gr.Blocks:
    """A page with a component the app does not use (so no earlier test cached its signature)."""
    with gr.Blocks() as demo:
        colour = gr.ColorPicker("#ff0000", label="colour", info="pick one")
        out = gr.Textbox(label="answer")
        gr.Button("Ask").click(lambda x: x, colour, out)
    return demo


def test_the_session_config_is_the_same_with_cached_signatures() -> None:
    demo = _page()
    init = gr.ColorPicker.__dict__["__init__"]
    earlier = init.__dict__.pop("__signature__", None)  # as Gradio meets it: nothing cached
    try:
        before = SessionState(demo).config_values
        assert cache_init_signatures(demo) >= 1
        assert "info" in init.__signature__.parameters
        assert cache_init_signatures(demo) == 0  # nothing twice
        after = SessionState(demo).config_values
        assert after == before
        picker = next(c for c in after.values() if c.get("type") == "colorpicker")
        assert picker["props"]["label"] == "colour" and picker["props"]["info"] == "pick one"
    finally:
        init.__dict__.pop("__signature__", None)
        if earlier is not None:
            init.__signature__ = earlier


def test_new_sessions_take_states_built_ahead_and_stay_apart() -> None:
    import time

    from gradio_client import Client

    from vitdemo.ui.session_cost import keep_sessions_ready
    from webapp import free_port

    with gr.Blocks() as demo:
        count = gr.State(0)
        box = gr.Textbox()
        out = gr.Textbox()

        def bump(text: str, n: int) -> tuple[str, int]:
            return f"{text} {n + 1}", n + 1

        gr.Button("Go").click(bump, [box, count], [out, count], api_name="go")
    assert keep_sessions_ready(demo, 3) is None  # not launched yet: nothing to do
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                        ssr_mode=False, quiet=True)
    try:
        pool = keep_sessions_ready(demo, 3, idle_s=0.2)
        assert pool is not None
        deadline = time.monotonic() + 30
        while len(pool.ready) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        ahead = list(pool.ready)
        assert len(ahead) == 3
        expected = SessionState(demo).config_values

        alice, bob = (Client(demo.local_url, verbose=False) for _ in range(2))
        assert alice.predict("alice", api_name="/go") == "alice 1"
        assert alice.predict("alice", api_name="/go") == "alice 2"  # her own state, kept
        assert bob.predict("bob", api_name="/go") == "bob 1"  # not Alice's count
        taken = [s for s in demo.state_holder.session_data.values() if any(s is a for a in ahead)]
        assert len(taken) == 2  # both sessions started from states built ahead
        assert taken[0] is not taken[1]
        fresh = [s for s in taken if all(v is not s for v in pool.ready)]
        assert len(fresh) == 2 and all(dict(s.config_values) == expected for s in pool.ready)

        deadline = time.monotonic() + 30  # refilled once sessions stop opening
        while len(pool.ready) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool.ready) == 3 and pool.built == 5
    finally:
        demo.close()
    pool.thread.join(timeout=15)
    assert not pool.thread.is_alive()  # a closed app's pool stops (and lets the app go)


def test_states_are_built_only_once_the_queue_has_been_quiet_for_a_while() -> None:
    """A class's follow-ups leave the queue empty for a moment between answers: no build then."""
    from vitdemo.ui.session_cost import ReadySessions

    with gr.Blocks() as demo:  # never launched: the pool's thread sees no running app and stops
        gr.Textbox()
    pool = ReadySessions(demo, size=0, idle_s=1.0)
    pool.thread.join(timeout=15)
    assert pool._wait_before_build(100.0, queue_busy=True) > 0  # requests running: wait
    assert pool._wait_before_build(100.1, queue_busy=False) > 0  # a gap between two answers: still wait
    assert pool._wait_before_build(100.9, queue_busy=False) > 0
    assert pool._wait_before_build(101.1, queue_busy=False) == 0  # quiet for idle_s: build
    pool.last_take = 101.5  # a session opened (took a ready state): wait again
    assert pool._wait_before_build(102.0, queue_busy=False) > 0
    assert pool._wait_before_build(102.6, queue_busy=False) == 0
    assert 0 < pool._wait_before_build(104.0, queue_busy=True) <= 0.2  # naps short: a new burst is seen soon
    assert 0 < pool._wait_before_build(104.1, queue_busy=False) <= 0.2


def test_states_built_ahead_share_the_page_config_until_a_session_changes_its_own() -> None:
    """A state built ahead equals Gradio's own and costs a few objects, not a copy of every
    block's config; an output's new value (Gradio edits the session's config in place)
    reaches that session only."""
    import gc

    from vitdemo.ui.session_cost import _state_like

    with gr.Blocks() as demo:  # a page of some size, as the app's ~270 blocks
        boxes = [gr.Textbox(label=f"box {i}", info="a box") for i in range(30)]
        out = gr.Textbox(label="answer")
        gr.Button("Ask").click(lambda *xs: " ".join(xs), boxes, out)
    template, gradios = SessionState(demo), SessionState(demo)
    alice, bob = _state_like(template, demo), _state_like(template, demo)
    assert dict(alice.config_values) == gradios.config_values
    assert alice.blocks_config is not bob.blocks_config and alice.state_data is not bob.state_data

    key = next(k for k, v in gradios.config_values.items() if v.get("props", {}).get("label") == "answer")
    alice._update_value_in_config(key, "Alice's answer")
    assert alice.config_values[key]["props"]["value"] == "Alice's answer"
    assert bob.config_values[key]["props"].get("value") != "Alice's answer"
    assert template.config_values[key]["props"].get("value") != "Alice's answer"
    assert [c for c in bob.components] == [c for c in gradios.components]  # the deep-link view

    def tracked(make) -> int:
        gc.collect()
        before = len(gc.get_objects())
        keep = [make() for _ in range(10)]
        gc.collect()
        return (len(gc.get_objects()) - before) // len(keep)

    assert tracked(lambda: _state_like(template, demo)) * 5 < tracked(lambda: SessionState(demo))
