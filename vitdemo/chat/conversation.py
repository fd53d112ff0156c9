"""Conversation -> prompt (the processor's chat template) -> streamed answer tokens.

A conversation is a list of `{"role": "user"|"assistant", "content": [...]}` dicts whose
content items are `{"type": "image"}` or `{"type": "text", "text": str}`, plus a list of
PIL images in the order of their `{"type": "image"}` items.

Each request is processed here, in its caller's thread (so a bad image or an overlong
prompt fails that request alone), then goes through the engine's batching scheduler
(vitdemo.core.scheduler): requests waiting for the model run as one batched `generate`,
each row streaming its own tokens, which are decoded to text here. A threading.Event
stops a row after its current token without stopping the others.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

from vitdemo.core.engine import KEEP, Engine
from vitdemo.errors import GenerationError, ImageError, InputError, VitdemoError

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Conversation = list[Message]


@dataclass
class GenerationSettings:
    """How to generate one answer. Greedy by default, so a demo is repeatable."""

    max_new_tokens: int = 256  # answer length limit in tokens
    temperature: float = 0.0  # 0 = greedy (deterministic); > 0 samples
    top_p: float = 1.0  # nucleus sampling mass, used only when temperature > 0
    seed: int | None = 0  # sampling seed; None = a different answer each time
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens

    def validate(self, cap: int | None = None) -> None:
        """Raise InputError naming the bad value and its allowed range."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if cap is not None and self.max_new_tokens > cap:
            raise InputError(f"max_new_tokens={self.max_new_tokens} is above the server's cap of {cap}")
        if not 0.0 <= self.temperature <= 5.0:
            raise InputError(f"temperature={self.temperature} must be between 0 and 5")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p={self.top_p} must be in (0, 1]")
        if not 0.5 <= self.repetition_penalty <= 2.0:
            raise InputError(f"repetition_penalty={self.repetition_penalty} must be between 0.5 and 2")

    def within_model_cap(self, model: Any) -> "GenerationSettings":
        """These settings, asking for no more new tokens than the model's generation config
        allows (the classroom model declares what its longest answer needs there; most Hub
        models declare nothing and keep the requested length)."""
        cap = getattr(getattr(model, "generation_config", None), "max_new_tokens", None)
        if isinstance(cap, int) and 0 < cap < self.max_new_tokens:
            return replace(self, max_new_tokens=cap)
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for model.generate."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            # Explicit, so a model's generation_config cannot turn sampling on.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


@dataclass
class AnswerStats:
    """Filled in by stream_answer while it runs: timings for benchmarks and logs."""

    input_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None  # seconds from the call to the first text piece
    total_s: float = 0.0
    stopped: bool = False  # the stop event ended generation early
    pieces: list[str] = field(default_factory=list, repr=False)


# --- conversations --------------------------------------------------------------------

def user_message(text: str, n_images: int = 0) -> Message:
    """A user turn: the images first (as most chat templates expect), then the text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def count_images(conversation: Sequence[Message]) -> int:
    return sum(
        1 for m in conversation for item in _content(m) if isinstance(item, dict) and item.get("type") == "image"
    )


def _content(message: Message) -> list[Any]:
    content = message.get("content", [])
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def validate_conversation(conversation: Sequence[Message], images: Sequence[Any]) -> None:
    """Loud checks with numbers: non-empty, ends with a user turn, images match placeholders."""
    if not conversation:
        raise InputError("the conversation is empty: type a question (and add an image)")
    last = conversation[-1]
    if last.get("role") != "user":
        raise InputError(f"the last message must be from the user, not {last.get('role')!r}")
    has_text = any(
        item.get("type") == "text" and str(item.get("text", "")).strip() for item in _content(last)
    )
    if not has_text:
        raise InputError("the message is empty: type a question")
    n_placeholders = count_images(conversation)
    if n_placeholders != len(images):
        raise InputError(
            f"the conversation has {n_placeholders} image placeholders but {len(images)} images were given"
        )


def build_inputs(processor: Any, conversation: Sequence[Message], images: Sequence[Any]) -> Any:
    """Model inputs (a BatchFeature of tensors, batch 1) through the processor's chat template."""
    validate_conversation(conversation, images)
    prompt = processor.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
    kwargs: dict[str, Any] = {"text": prompt, "return_tensors": "pt"}
    if images:
        kwargs["images"] = list(images)
    try:
        inputs = processor(**kwargs)
    except (ValueError, TypeError) as err:
        raise InputError(f"the processor refused this message: {str(err).splitlines()[0][:300]}") from err
    except OSError as err:  # a lazily opened image whose data turns out broken
        raise ImageError(f"an image of this message could not be decoded ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}): upload it again or use another file") from err
    return inputs


def _context_limit(model: Any) -> int | None:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def check_context(model: Any, processor: Any, conversation: Sequence[Message], images: Sequence[Any],
                  n_input: int) -> None:
    """Refuse a prompt of `n_input` tokens that the model cannot read (InputError).

    The one length check of every tab (Chat, Attention). The message says whether the
    question itself is too long (shorten it) or the conversation before it (clear or undo).
    """
    limit = _context_limit(model)
    if limit is None or n_input < limit:
        return
    last = list(conversation)[-1:]
    n_last_images = count_images(last)
    last_images = list(images)[len(images) - n_last_images:] if n_last_images else []
    n_alone = n_input if len(conversation) == 1 else int(
        build_inputs(processor, last, last_images)["input_ids"].shape[-1])
    if n_alone >= limit:
        with_images = " (its images count too)" if n_last_images else ""
        raise InputError(f"the question is too long: {n_alone} tokens, the model's context is {limit} "
                         f"tokens{with_images}: shorten the question")
    raise InputError(f"the conversation is {n_input} tokens, the model's context is {limit} (this question "
                     f"alone is {n_alone}): clear the chat or undo earlier questions, or use fewer images")


# --- generation -----------------------------------------------------------------------

def stopping_criteria(*events: threading.Event):
    """For model.generate: stop after the current token once any of `events` is set."""
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([_event_stop_class()(events)])


@functools.lru_cache(maxsize=1)
def _event_stop_class() -> type:
    """A stopping criterion that ends generation once any of its events is set (built once)."""
    from transformers import StoppingCriteria

    class EventStop(StoppingCriteria):
        def __init__(self, events: Sequence[threading.Event]) -> None:
            self.events = events

        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001 - transformers' signature
            return any(e.is_set() for e in self.events)

    return EventStop


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


def stream_answer(
    engine: Engine,
    conversation: Sequence[Message],
    images: Sequence[Any],
    gen: GenerationSettings | None = None,
    *,
    stop_event: threading.Event | None = None,
    adapter: Any = KEEP,
    stats: AnswerStats | None = None,
) -> Iterator[str]:
    """Yield the answer as text pieces as they are generated.

    The request joins the next batch of the engine's scheduler. Setting `stop_event` ends
    it after the current token; closing the iterator early also ends it (other requests
    in the batch go on). Raises InputError for a bad request, GenerationError (message
    with numbers) when generation fails; the engine stays usable after either. On return
    the model is free again unless other requests of the batch are still generating.
    """
    from vitdemo.core.scheduler import Row

    gen = gen or GenerationSettings()
    gen.validate()
    gen = gen.within_model_cap(engine.model)
    stats = stats if stats is not None else AnswerStats()
    started = time.perf_counter()
    text = _Detokenizer(getattr(engine.processor, "tokenizer", engine.processor))
    scheduler = engine.scheduler
    with scheduler.preparing() as ticket:  # a crowded dispatcher waits for it before starting a batch
        inputs = build_inputs(engine.processor, conversation, images)
        n_input = int(inputs["input_ids"].shape[-1])
        stats.input_tokens = n_input
        check_context(engine.model, engine.processor, conversation, images, n_input)
        row = ticket.submit(Row(inputs, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                top_p=gen.top_p, seed=gen.seed, repetition_penalty=gen.repetition_penalty,
                                adapter=adapter, stop_event=stop_event))
    try:
        for ids in row.tokens():
            piece = text.add(ids)
            if not piece:
                continue
            if stats.first_token_s is None:
                stats.first_token_s = time.perf_counter() - started
            stats.pieces.append(piece)
            yield piece
    except VitdemoError:
        raise
    except Exception as err:  # noqa: BLE001 - the row's generate failed: say what to change
        raise generation_failure(err, n_input=n_input, max_new_tokens=gen.max_new_tokens, n_images=len(images),
                                 device=engine.device) from err
    finally:
        # Reached on normal end, on an exception, and when the caller closes the iterator.
        scheduler.cancel(row)  # a row still running ends after its current token
        row.wait_released()
        stats.total_s = time.perf_counter() - started
        stats.new_tokens = row.new_tokens
        stats.stopped = row.stop_event.is_set()


class _Detokenizer:
    """Token ids -> new text, handed on as soon as it decodes to whole characters (a
    multi-byte character split over tokens waits for its last byte)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.printed = 0  # characters already handed on

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self.printed:]
        self.printed += len(piece)
        return piece


def generation_failure(err: BaseException, *, n_input: int, max_new_tokens: int, n_images: int, device: str,
                       with_maps: bool = False) -> GenerationError:
    """The error a person sees when generate() raised: for out of memory, what to change."""
    if _is_oom(err):
        advice = "lower max new tokens, use fewer or smaller images, clear the chat, or load the model with --quant 4bit"
        if with_maps:
            advice = ("lower max new tokens (the maps grow with every word), use fewer or smaller images, "
                      "or load the model with --quant 4bit")
        return GenerationError(f"out of memory while generating ({n_input} input tokens, max_new_tokens "
                               f"{max_new_tokens}, {n_images} images on {device}): {advice}")
    detail = str(err).splitlines()[0][:300] if str(err) else ""
    return GenerationError(f"generation failed ({type(err).__name__}: {detail})")


def answer(
    engine: Engine,
    conversation: Sequence[Message],
    images: Sequence[Any],
    gen: GenerationSettings | None = None,
    **kwargs: Any,
) -> str:
    """The whole answer as one string (the CLI and the API use this)."""
    return "".join(stream_answer(engine, conversation, images, gen, **kwargs)).strip()
