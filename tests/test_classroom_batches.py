"""Training sequences of the classroom model match the chat template the app uses."""

import numpy as np
import pytest

from vitdemo.classroom import scenes
from vitdemo.classroom.batches import IGNORE, BatchMaker
from vitdemo.classroom.model import build_processor


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def test_piecewise_ids_equal_chat_template_ids(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    turns = [("What color is the circle?", "red"), ("Where is the red circle?", "top left"),
             ("用中文回答", "红色")]
    seq, labels = maker.dialogue(turns, with_image=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]}]
    for i, (q, a) in enumerate(turns):
        if i:
            messages.append({"role": "user", "content": [{"type": "text", "text": q}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    text = processor.apply_chat_template(messages)
    image = scenes.generate_scene(np.random.default_rng(1)).image
    ids = processor(images=[image], text=text, return_tensors="pt")["input_ids"][0].tolist()
    assert ids == seq
    # Loss only on the answers and their end tokens.
    supervised = processor.tokenizer.decode([t for t in labels if t != IGNORE])
    assert supervised == "red<|end|>top left<|end|>红色<|end|>"


def test_instruction_batch_shapes(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    batch = maker.instruction_batch(4, max_turns=3, form_weights={f: 1.0 for f in scenes.FORMS})
    size = processor.image_processor.size["height"]
    assert batch["pixel_values"].shape == (4, 3, size, size)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert ((batch["input_ids"] == image_id).sum(1) == 64).all()
    assert ((batch["labels"] != IGNORE).sum(1) > 0).all()


def test_contrastive_batch_has_near_miss_twins(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    batch = maker.contrastive_batch(8, twin_fraction=0.5)
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    for a, b in ((0, 1), (2, 3)):
        first, second = scenes.parse_description(texts[a]), scenes.parse_description(texts[b])
        assert first != second and len(first) == len(second)
        # Exactly one attribute of one object differs, or the places are swapped.
        assert len(first - second) == 1 or {(c, s) for c, s, _ in first} == {(c, s) for c, s, _ in second}
