"""The Learn tab's numbers are the ones the model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitdemo.classroom.zero_shot import match_captions
from vitdemo.learn.inside import walk_through_head


def _inputs(model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}],
        add_generation_prompt=True)
    return model, processor, dict(processor(images=[image], text=text, return_tensors="pt"))


def test_head_walkthrough_recomputes_the_models_head_output(tiny_llava_dir):
    model, processor, inputs = _inputs(tiny_llava_dir)
    n_layers = model.config.get_text_config().num_hidden_layers
    n_heads = model.config.get_text_config().num_attention_heads
    layer, head = n_layers - 1, n_heads - 1
    walk = walk_through_head(model, processor, inputs, layer=layer, head=head)
    T = inputs["input_ids"].shape[1]
    assert walk.q.shape == walk.k.shape == walk.v.shape == walk.output.shape == (T, walk.q.shape[1])
    # Recompute from the shown Q, K, V alone and compare with what the model fed W^O.
    scores = walk.q @ walk.k.T / np.sqrt(walk.q.shape[1])
    scores[np.triu_indices(T, 1)] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights @ walk.v, walk.model_output, atol=1e-4)
    assert walk.max_abs_difference < 1e-4
    # And the softmax equals the attention weights the model reports (eager path).
    with torch.inference_mode():
        reported = model(**inputs, output_attentions=True).attentions[layer][0, head].numpy()  # (T, T)
    np.testing.assert_allclose(walk.weights, reported, atol=1e-5)
    assert walk.mlp["intermediate"] > walk.mlp["hidden"] > 0


def test_walkthrough_rejects_out_of_range_head(tiny_llava_dir):
    model, processor, inputs = _inputs(tiny_llava_dir)
    with pytest.raises(ValueError, match="head must be"):
        walk_through_head(model, processor, inputs, layer=0, head=99)


def test_caption_match_equals_the_clip_models_own_logits():
    from vitdemo.classroom.model import build_clip, build_processor
    from vitdemo.classroom import scenes

    processor = build_processor()
    clip = build_clip(processor, seed=3).eval()
    rng = np.random.default_rng(0)
    images = [scenes.generate_scene(rng).image for _ in range(2)]
    captions = ["a red circle at top", "a blue square at center and a green triangle at left", "a yellow square at bottom"]
    match = match_captions(clip, processor, images, captions)
    tok = processor.tokenizer
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in captions]
    width = max(map(len, ids))
    input_ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(i) for i in ids])[:, None]).long()
    with torch.inference_mode():
        out = clip(input_ids=input_ids, attention_mask=mask,
                   pixel_values=processor.image_processor(images, return_tensors="pt")["pixel_values"])
    np.testing.assert_allclose(match.probs, out.logits_per_image.softmax(-1).numpy(), atol=1e-5)
    assert match.picked == out.logits_per_image.argmax(-1).tolist()


def test_classroom_only_sections_say_so_politely_for_other_models(tiny_llava_dir):
    from vitdemo.core.engine import Engine
    from vitdemo.errors import UnsupportedModelError
    from vitdemo.learn import classroom_folder
    from vitdemo.learn.stages import load_stages
    from vitdemo.core.loading import load_model

    engine = Engine(load_model(str(tiny_llava_dir)))
    with pytest.raises(UnsupportedModelError, match="needs the classroom model's extra parts"):
        classroom_folder(engine)
    with pytest.raises(UnsupportedModelError, match="needs the classroom model"):
        load_stages(tiny_llava_dir)
    # The head walkthrough is not classroom-only: it works on any Llama-style decoder.
    model, processor, inputs = _inputs(tiny_llava_dir)
    assert walk_through_head(model, processor, inputs, layer=0, head=0).max_abs_difference < 1e-4


def test_stage_answers_of_an_untrained_decoder_read_as_a_note_not_as_garbage():
    from vitdemo.learn.stages import readable_answer

    assert readable_answer("\ufffd \ufffd\ufffd \ufffd").startswith("(no words yet")
    for real in ("red", "橙色", "a red circle at top", "yes \ufffd"):  # real answers stay as they are
        assert readable_answer(real) == real


def test_every_stage_of_the_shipped_model_says_what_it_teaches():
    """The Learn tab explains each recorded stage; a stage added to the recipe needs its note."""
    from vitdemo.learn.stages import load_stages
    from vitdemo.paths import CLASSROOM_MODEL_DIR

    stages = load_stages(CLASSROOM_MODEL_DIR)
    assert [s.name for s in stages] == ["contrastive", "language", "alignment", "instruction", "backgrounds"]
    assert all(s.note for s in stages), [s.name for s in stages if not s.note]
