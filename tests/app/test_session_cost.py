"""New sessions are cheap and stay apart: a cached component signature gives the same config
as Gradio computes without it, and sessions share the page's block configs until they change one."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from vitdemo.ui.session_cost import _SharedConfigs, _state_like, cache_init_signatures, share_session_configs


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


def test_new_sessions_share_the_page_config_and_each_keeps_its_own_changes() -> None:
    """Through a real server: each client's session starts from the shared configs, its
    answers change only its own config and state, and the template stays as built."""
    from gradio_client import Client

    from webapp import free_port

    with gr.Blocks() as demo:
        count = gr.State(0)
        box = gr.Textbox()
        out = gr.Textbox(label="out")

        def bump(text: str, n: int) -> tuple[str, int]:
            return f"{text} {n + 1}", n + 1

        gr.Button("Go").click(bump, [box, count], [out, count], api_name="go")
    assert share_session_configs(demo) is False  # not launched yet: nothing to do
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                        ssr_mode=False, quiet=True)
    try:
        assert share_session_configs(demo) is True
        template = demo.state_holder.vitdemo_template
        expected = SessionState(demo).config_values
        assert template.config_values == expected

        alice, bob = (Client(demo.local_url, verbose=False) for _ in range(2))
        assert alice.predict("alice", api_name="/go") == "alice 1"
        assert alice.predict("alice", api_name="/go") == "alice 2"  # her own state, kept
        assert bob.predict("bob", api_name="/go") == "bob 1"  # not Alice's count
        states = list(demo.state_holder.session_data.values())
        assert len(states) == 2 and all(isinstance(s.config_values, _SharedConfigs) for s in states)
        assert all(s.config_values.keys() == expected.keys() for s in states)
        shown = sorted(s.config_values[out._id]["props"]["value"] for s in states)
        assert shown == ["alice 2", "bob 1"]  # each session's output config holds its own answer
        assert template.config_values == expected  # nothing reached the shared configs
    finally:
        demo.close()


def _big_page() -> gr.Blocks:
    with gr.Blocks() as demo:  # a page of some size, as the app's ~270 blocks
        boxes = [gr.Textbox(label=f"box {i}", info="a box") for i in range(30)]
        out = gr.Textbox(label="answer")
        gr.Button("Ask").click(lambda *xs: " ".join(xs), boxes, out)
    return demo


def test_a_state_from_the_template_equals_gradios_and_costs_a_few_objects() -> None:
    import gc

    demo = _big_page()
    template, gradios = SessionState(demo), SessionState(demo)
    alice, bob = _state_like(template, demo), _state_like(template, demo)
    assert vars(alice).keys() == vars(gradios).keys()
    assert dict(alice.config_values) == gradios.config_values
    assert alice.blocks_config is not bob.blocks_config and alice.state_data is not bob.state_data
    assert alice.blocks_config.blocks == gradios.blocks_config.blocks

    key = next(k for k, v in gradios.config_values.items() if v.get("props", {}).get("label") == "answer")
    alice._update_value_in_config(key, "Alice's answer")  # how Gradio stores an output's new value
    assert alice.config_values[key]["props"]["value"] == "Alice's answer"
    assert bob.config_values[key]["props"].get("value") != "Alice's answer"
    assert template.config_values[key]["props"].get("value") != "Alice's answer"
    assert list(bob.components) == list(gradios.components)  # what the deep-link route reads

    def tracked(make) -> int:
        gc.collect()
        before = len(gc.get_objects())
        keep = [make() for _ in range(10)]
        gc.collect()
        return (len(gc.get_objects()) - before) // len(keep)

    assert tracked(lambda: _state_like(template, demo)) * 5 < tracked(lambda: SessionState(demo))


def test_no_dict_method_hands_a_shared_config_out_for_editing() -> None:
    import copy
    import pickle

    shared = {1: {"props": {"value": "a"}}, 2: {"props": {"value": "b"}}, 3: {"props": {"value": "c"}}}
    pristine = copy.deepcopy(shared)

    def mine() -> _SharedConfigs:
        return _SharedConfigs(shared)

    mine().get(1)["props"]["value"] = "x"
    mine().setdefault(1, {})["props"]["value"] = "x"
    mine().pop(1)["props"]["value"] = "x"
    mine().popitem()[1]["props"]["value"] = "x"
    for whole in (mine().copy(), copy.copy(mine()), copy.deepcopy(mine()), mine() | {},
                  pickle.loads(pickle.dumps(mine()))):
        for config in whole.values():
            config["props"]["value"] = "x"
    configs = mine()
    configs.update({2: {"props": {"value": "new"}}})
    configs[2]["props"]["value"] = "x"
    configs |= {3: {"props": {}}}
    configs[3]["props"]["value"] = "x"
    assert shared == pristine

    with pytest.raises(KeyError):  # as a dict's
        _SharedConfigs({}).popitem()
