"""Greedy answers to many prompts at once: left-padded batches of `model.generate`.

Evaluation's way of asking (the classroom's held-out questions, a fine-tune's held-out
examples and retention probes): no streaming, no engine lock, the model passed in. Each
prompt is a conversation ending with a user turn plus its images, rendered by the
processor's chat template exactly as the Chat tab renders it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from vitdemo.chat.conversation import Conversation, user_message

logger = logging.getLogger(__name__)

Prompt = tuple[Conversation, Sequence[Any]]  # (conversation ending with a user turn, its PIL images)


def greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """The model's generation config made greedy, with nothing it would suppress."""
    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens = max_new_tokens
    gc.do_sample = False
    gc.num_beams = 1
    for name in ("temperature", "top_p", "top_k"):
        setattr(gc, name, None)
    # A base model's suppressed tokens (e.g. non-ASCII bytes) must not forbid what a fine-tune
    # teaches. An empty list, not None: generate() fills None from the model's own config.
    gc.suppress_tokens = []
    gc.begin_suppress_tokens = []
    if gc.eos_token_id is None:
        gc.eos_token_id = tokenizer.eos_token_id
    if gc.pad_token_id is None:  # rows that finished early are padded with it
        gc.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return gc


def greedy_answers(model: Any, processor: Any, prompts: Sequence[Prompt], *, max_new_tokens: int = 32,
                   batch_size: int = 8) -> list[str]:
    """One greedy answer per prompt, in order. A batch the processor or model refuses
    (e.g. one that mixes prompts with and without images) is answered one by one."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = processor.tokenizer
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    gc = greedy_config(model, tokenizer, max_new_tokens)
    answers: list[str] = []
    try:
        with torch.no_grad():  # not inference_mode: training may go on with this model afterwards
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                try:
                    answers += _generate(model, processor, chunk, gc)
                except (ValueError, RuntimeError) as exc:
                    if len(chunk) == 1:
                        raise
                    logger.debug("batched generation failed (%s); one by one", exc)
                    for prompt in chunk:
                        answers += _generate(model, processor, [prompt], gc)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers


def _generate(model: Any, processor: Any, prompts: Sequence[Prompt], gc: Any) -> list[str]:
    from vitdemo.core.batch_inputs import to_model

    texts = [processor.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=False)
             for conv, _ in prompts]
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
    images = [list(ims) for _, ims in prompts]
    if any(images):
        if not all(images):
            raise ValueError("batch mixes prompts with and without images")
        kwargs["images"] = images
    inputs = to_model(processor(**kwargs), model)
    out = model.generate(**inputs, generation_config=gc)  # (B, T_prompt + new)
    new = out[:, inputs["input_ids"].shape[1]:]  # (B, new)
    return [a.strip() for a in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def answer_batch(model: Any, processor: Any, images: Sequence[Any], questions: Sequence[str],
                 max_new_tokens: int = 40, batch_size: int = 32) -> list[str]:
    """Greedy answers to one question about one image each."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions: give one image per question")
    prompts = [([user_message(q, 1)], [image]) for image, q in zip(images, questions)]
    return greedy_answers(model, processor, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
