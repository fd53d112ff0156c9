"""What a new user hit in the Attention tab (issue 18), below the page: the length limit,
downloads that follow the chosen layer and head, the head grid's Smooth, the Stop signal."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdemo.attention import view as av
from vitdemo.attention.attend import View, stream_with_maps
from vitdemo.chat.conversation import GenerationSettings
from vitdemo.errors import InputError

GEN = GenerationSettings(max_new_tokens=3)


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    return Engine(load_model(str(tiny_llava_dir), device="cpu"))


def _image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def _conv(question: str) -> list:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def session(engine) -> av.AttentionSession:
    image = _image()
    s = av.AttentionSession(images=[image])
    for event in stream_with_maps(engine, _conv("what is here?"), [image], GEN):
        s.result = event.result
    assert s.result is not None and len(s.result.answer_tokens) >= 1
    return s


def test_question_longer_than_the_model_reads_is_refused(engine) -> None:
    # The Chat tab's check, with the same message: the question itself is too long.
    with pytest.raises(InputError, match=r"the question is too long: \d+ tokens.*context is 512"):
        next(iter(stream_with_maps(engine, _conv("red " * 700), [_image()], GEN)))


def test_downloads_follow_the_layer_and_head_on_screen(session, tmp_path: Path) -> None:
    result = session.result
    default = av.downloads(session, View(), root=tmp_path / "a")
    chosen = av.downloads(session, View(), root=tmp_path / "b", layer="layer 0", head="head 1")
    payload = json.loads(Path(next(p for p in chosen if p.endswith(".json"))).read_text())
    assert payload["map_spec"] == av.spec_for("layer 0", "head 1").describe()
    expected = result.token_maps("answer", 0, av.spec_for("layer 0", "head 1"))[0]
    assert np.allclose(payload["maps"][0], expected, atol=1e-5)
    default_payload = json.loads(Path(next(p for p in default if p.endswith(".json"))).read_text())
    assert not np.allclose(payload["maps"][0], default_payload["maps"][0], atol=1e-5)
    # The PNGs differ too, and the npz keeps the chosen maps beside the default ones.
    png_a = np.asarray(Image.open(next(p for p in default if p.endswith(".png"))))
    png_b = np.asarray(Image.open(next(p for p in chosen if p.endswith(".png"))))
    assert png_a.shape == png_b.shape and not np.array_equal(png_a, png_b)
    arrays = np.load(next(p for p in chosen if p.endswith(".npz")))
    assert "selected_maps_image0" in arrays and "default_maps_image0" in arrays


def test_head_grid_follows_smooth(session) -> None:
    sharp = av.heads_picture(session, "layer 0", 0, View(smooth=False, min_side=384))
    smooth = av.heads_picture(session, "layer 0", 0, View(smooth=True, min_side=384))
    assert sharp.size == smooth.size
    assert not np.array_equal(np.asarray(sharp), np.asarray(smooth))


def test_stop_signal_is_per_user() -> None:
    initial = av.StopSignal()
    mine, yours = copy.deepcopy(initial), copy.deepcopy(initial)
    mine.event.set()
    assert mine.event.is_set() and not yours.event.is_set() and not initial.event.is_set()


def test_stop_ends_the_answer_after_the_current_word(engine) -> None:
    signal = av.StopSignal()
    events = []
    for event in stream_with_maps(engine, _conv("what is here?"), [_image()],
                                  GenerationSettings(max_new_tokens=40), stop_event=signal.event):
        events.append(event)
        signal.event.set()
    assert len(events) <= 2 and events[-1].result is not None


def test_a_finished_answer_leaves_the_callers_stop_event_alone(engine) -> None:
    # The tab reads the event to say "Stopped": capture used to set it itself at the end.
    import threading

    event = threading.Event()
    events = list(stream_with_maps(engine, _conv("what is here?"), [_image()], GEN, stop_event=event))
    assert events and events[-1].result is not None
    assert not event.is_set()
