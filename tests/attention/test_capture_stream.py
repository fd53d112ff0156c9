"""stream_capture step by step: every yielded result against an independent reference.

The reference is one eager forward over the whole generated sequence with
output_attentions=True (no hooks, no KV cache): the row of the query that predicted each
answer token, restricted to the image tokens. The answer is forced to contain a special
token in the middle, which the capture skips, so the kept rows are not a prefix of the
generated steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitdemo.attention.capture import (
    CaptureSettings,
    capture,
    eager_attention,
    rollout_update,
    stream_capture,
    vision_attention_modules,
)
from vitdemo.attention.layouts import build_layout
from vitdemo.attention.maps import rollout, rollout_step

N_NEW = 6
FORCED_AT = 2  # generation step whose token is forced to a special (skipped) token


def _load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _inputs(processor, images):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": "what is here?"}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(images=images, text=prompt, return_tensors="pt")


def _force_token_at(step: int, token_id: int, n_prompt: int):
    """A logits processor that makes generation step `step` produce `token_id`."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[-1] - n_prompt == step:
                scores = torch.full_like(scores, -float("inf"))
                scores[:, token_id] = 0.0
            return scores

    return LogitsProcessorList([Force()])


@pytest.mark.parametrize("keep_special", [False, True])
def test_every_streamed_step_equals_a_full_forward_reference(tiny_llava_dir, keep_special):
    model, processor = _load(tiny_llava_dir)
    tokenizer = processor.tokenizer
    images = [Image.new("RGB", (60, 40), (200, 30, 30))]
    inputs = _inputs(processor, images)
    n_prompt = int(inputs["input_ids"].shape[-1])
    forced = tokenizer.pad_token_id  # a special token that does not end generation
    assert forced in tokenizer.all_special_ids and forced != tokenizer.eos_token_id
    gen = {"max_new_tokens": N_NEW, "min_new_tokens": N_NEW, "do_sample": False,
           "logits_processor": _force_token_at(FORCED_AT, forced, n_prompt)}

    snapshots: list[np.ndarray] = []  # a copy of answer_attn at each step
    handed_out: list[np.ndarray] = []  # the array itself, as a consumer holding it would
    texts: list[str] = []
    result = None
    for k, step in enumerate(stream_capture(model, processor, inputs, images, gen, CaptureSettings(vision=False),
                                            keep_special=keep_special)):
        result = step.result
        assert step.index == k
        assert result.answer_attn.shape[0] == k + 1  # one row per answer token so far
        assert len(result.answer_ids) == k + 1
        snapshots.append(result.answer_attn.copy())
        handed_out.append(result.answer_attn)
        texts.append(step.text)
    assert result is not None

    # The same greedy ids from plain generation, and which steps the capture kept.
    with torch.inference_mode():
        full = model.generate(**inputs, **gen)
    generated = full[0, n_prompt:].tolist()
    assert len(generated) == N_NEW and generated[FORCED_AT] == forced
    special = set(tokenizer.all_special_ids)
    kept = [s for s, t in enumerate(generated) if keep_special or t not in special]
    assert result.answer_ids == [generated[s] for s in kept]
    if not keep_special:
        assert FORCED_AT not in kept and len(kept) < N_NEW  # the skipped token really was skipped

    # Reference: one eager forward over prompt + answer, every layer's attention weights.
    layout = build_layout(model.config, processor, inputs, images)
    with eager_attention(model), torch.inference_mode():
        out = model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=inputs["pixel_values"],
                    output_attentions=True)
    image_pos = torch.as_tensor(layout.positions)
    queries = torch.as_tensor([n_prompt - 1 + s for s in kept])  # the query that predicted each kept token
    reference = torch.stack([a[0][:, queries][:, :, image_pos] for a in out.attentions])  # (L, H, n, n_img)
    reference = reference.permute(2, 0, 1, 3).float().numpy()  # (n_answer, L, H, n_img)

    assert len(snapshots) == len(kept)
    for k, snap in enumerate(snapshots):
        np.testing.assert_allclose(snap, reference[: k + 1], atol=1e-5)
        # what an earlier step handed out is unchanged by the later ones
        np.testing.assert_array_equal(handed_out[k], snap)
        assert texts[k] == tokenizer.decode(result.answer_ids[: k + 1], skip_special_tokens=True)
    np.testing.assert_allclose(result.answer_attn, reference, atol=1e-5)
    assert result.answer_attn.shape == reference.shape


def test_rollout_update_equals_rollout_step():
    rng = np.random.default_rng(1)
    attn = [rng.dirichlet(np.ones(7), size=(3, 7)).astype(np.float32) for _ in range(3)]  # (tiles, N, N)
    for residual in (0.5, 0.2):
        # first layer: exactly the step times the identity, without computing that product
        first = rollout_update(None, attn[0], residual)
        np.testing.assert_array_equal(first, rollout_step(np.eye(7)[None], attn[0], residual))
        running, expected = first, rollout_step(np.eye(7)[None], attn[0], residual)
        for a in attn[1:]:
            running, expected = rollout_update(running, a, residual), rollout_step(expected, a, residual)
            np.testing.assert_allclose(running, expected, rtol=1e-12)
        assert running.dtype == np.float64 and running.shape == (3, 7, 7)


def test_captured_rollout_equals_the_rollout_of_a_reference_forward(tiny_llava_dir):
    """The capture's running rollout (first layer without the identity product) against
    maps.rollout over the vision tower's head-averaged attention from its own forward."""
    model, processor = _load(tiny_llava_dir)
    images = [Image.new("RGB", (60, 40), (200, 30, 30))]
    inputs = _inputs(processor, images)
    result = capture(model, processor, inputs, images, {"max_new_tokens": 2, "min_new_tokens": 2,
                                                        "do_sample": False})
    vision_config = model.config.vision_config
    tower = next(m for m in model.modules() if m is not model and getattr(m, "config", None) is vision_config)
    assert vision_attention_modules(model)  # the capture hooked this tower
    with eager_attention(model), torch.inference_mode():
        attns = tower(inputs["pixel_values"], output_attentions=True).attentions
    roll = np.stack([rollout([a[t].float().mean(0).numpy() for a in attns]) for t in range(len(attns[0]))])
    expected = np.stack([roll[:, 0, :], roll.mean(1)], axis=1)  # CLS row, mean row (CLIP has a CLS token)
    assert result.vision is not None
    np.testing.assert_allclose(result.vision.rollout, expected, atol=1e-5)


def test_streamed_rows_are_read_only_and_the_final_result_is_compact(tiny_llava_dir):
    """Consumers get views into the buffer the capture is still filling: they must not be
    able to write into it; the finished result owns a compact copy (not max_new_tokens rows)."""
    model, processor = _load(tiny_llava_dir)
    images = [Image.new("RGB", (60, 40), (200, 30, 30))]
    inputs = _inputs(processor, images)
    max_new = 8
    gen = {"max_new_tokens": max_new, "min_new_tokens": 3, "do_sample": False,
           "logits_processor": _force_token_at(3, processor.tokenizer.eos_token_id, int(inputs["input_ids"].shape[-1]))}
    steps = []
    for step in stream_capture(model, processor, inputs, images, gen, CaptureSettings(vision=False)):
        with pytest.raises(ValueError, match="read-only"):
            step.result.answer_attn[-1, 0, 0, 0] = 1.0
        steps.append(step)
    assert len(steps) == 3  # the forced end-of-sequence at step 3 ends the answer, and is skipped
    final = steps[-1].result.answer_attn
    assert final.shape[0] == 3 and final.base is None  # owns its rows; the 8-row buffer can go
