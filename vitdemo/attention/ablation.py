"""Ask, remove something, ask again: does the answer depend on what the map points at?

`ablate` answers a question about one image twice, as it is and with an intervention
(`interventions`: an image region removed in the pixels or inside the language model, or a
decoder layer or head knocked out), and reports both answers, the probability of the
first answer token before and after, and (where the model's layout is known) the map of
the first answer token both times.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vitdemo.attention import interventions
from vitdemo.attention.capture import CaptureMemoryError, CaptureSettings, stream_capture
from vitdemo.attention.layouts import ImageTokenLayout, build_layout
from vitdemo.attention.maps import AttentionResult
from vitdemo.core.engine import KEEP, Engine
from vitdemo.errors import InputError, UnsupportedModelError

log = logging.getLogger(__name__)

# Blanking to the background won on the classroom model (docs/causal-maps.md): it removes
# the object the way a picture without it would look, while the token methods leave traces
# of the object in its neighbours' tokens (the vision encoder mixes patches).
DEFAULT_METHOD = "blank"
ABLATION_MAX_NEW_TOKENS = 48  # answers are compared word for word; long ones add nothing


@dataclass
class Asked:
    """One answer with the distribution of its first token."""

    answer: str
    first_token_id: int
    first_token: str
    first_probs: Any  # torch tensor (vocab,): softmax of the first step's logits
    result: AttentionResult | None  # maps of the answer (None without a known layout)


@dataclass
class AblationOutcome:
    method: str  # a region method, "layer" or "head"
    box: tuple[int, int, int, int] | None  # the region, pixels of the original image
    layer: int | None
    head: int | None
    before: Asked
    after: Asked
    image_after: Image.Image  # what the model saw (pixels) or the hidden cells shaded (tokens)
    removed_tokens: int = 0  # image tokens hidden by a token method
    notice: str | None = None  # why there are no maps
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p_before(self) -> float:
        """Probability of the answer's first token, as asked."""
        return float(self.before.first_probs[self.before.first_token_id])

    @property
    def p_after(self) -> float:
        """Probability of the same token after the intervention."""
        return float(self.after.first_probs[self.before.first_token_id])

    @property
    def p_after_own(self) -> float:
        """Probability of the new answer's own first token after the intervention."""
        return float(self.after.first_probs[self.after.first_token_id])

    @property
    def changed(self) -> bool:
        return self.before.answer != self.after.answer

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "box": list(self.box) if self.box else None, "layer": self.layer,
                "head": self.head, "answer_before": self.before.answer, "answer_after": self.after.answer,
                "first_token": self.before.first_token, "p_before": round(self.p_before, 6),
                "p_after": round(self.p_after, 6), "first_token_after": self.after.first_token,
                "p_after_own": round(self.p_after_own, 6), "answer_changed": self.changed,
                "removed_image_tokens": self.removed_tokens, "notice": self.notice}


def _first_token(model: Any, inputs: Any) -> Any:
    """Softmax of the first generated step's logits, through generate() as the answer is
    (so masks and positions are treated exactly as when answering)."""
    import torch

    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return torch.softmax(out.logits[0][0].float(), dim=-1).cpu()


def _answer(model: Any, processor: Any, inputs: Any, images: Sequence[Image.Image], max_new_tokens: int,
            layout: ImageTokenLayout | None) -> tuple[str, AttentionResult | None, str | None]:
    gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
    if layout is not None:
        try:
            result = None
            for step in stream_capture(model, processor, inputs, images, gen_kwargs, CaptureSettings(vision=False),
                                       layout=layout):
                result = step.result
            if result is not None:
                return result.answer.strip(), result, None
            notice = "the answer has no words to map"
        except CaptureMemoryError as err:
            notice = str(err)
    else:
        notice = None
    import torch

    with torch.inference_mode():
        out = model.generate(**inputs, **gen_kwargs)
    tokenizer = getattr(processor, "tokenizer", processor)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[-1]:], skip_special_tokens=True)
    return text.strip(), None, notice


def ask_once(model: Any, processor: Any, inputs: Any, images: Sequence[Image.Image], max_new_tokens: int,
             layout: ImageTokenLayout | None) -> tuple[Asked, str | None]:
    probs = _first_token(model, inputs)
    token_id = int(probs.argmax())
    tokenizer = getattr(processor, "tokenizer", processor)
    answer, result, notice = _answer(model, processor, inputs, images, max_new_tokens, layout)
    return Asked(answer, token_id, tokenizer.decode([token_id]), probs, result), notice


def _layout_or_none(model: Any, processor: Any, inputs: Any, images: Sequence[Image.Image]
                    ) -> tuple[ImageTokenLayout | None, str | None]:
    try:
        return build_layout(model.config, processor, inputs, images), None
    except UnsupportedModelError as err:
        return None, str(err)


def check_request(method: str, box: Sequence[float] | None, layer: int | None, head: int | None) -> None:
    """InputError for a request that names no intervention or mixes them up."""
    if head is not None and layer is None:
        raise InputError("a head needs its layer: give the layer too")
    if box is None and layer is None:
        raise InputError("choose what to remove: a box of the image, or a layer (and a head)")
    if box is not None and layer is not None:
        raise InputError("remove either a box of the image or a layer/head, not both at once")
    if box is not None and method not in interventions.REGION_METHODS:
        raise InputError(f"unknown method {method!r}: use one of {', '.join(interventions.REGION_METHODS)}")


def ablate(engine: Engine, image: Image.Image, question: str, *, box: Sequence[float] | None = None,
           method: str = DEFAULT_METHOD, layer: int | None = None, head: int | None = None,
           max_new_tokens: int = ABLATION_MAX_NEW_TOKENS, adapter: Any = KEEP,
           with_maps: bool = True) -> AblationOutcome:
    """Answer `question` about `image`, then again with the intervention; see the module docstring.

    `with_maps=False` skips the attention capture (faster, for measurements over many items).

    Raises InputError for a bad box, layer, head or method, UnsupportedModelError when a
    token method needs an image layout the model does not have.
    """
    from vitdemo.chat.conversation import GenerationSettings, build_inputs, user_message
    from vitdemo.core.batch_inputs import to_model

    if not (question or "").strip():
        raise InputError("type a question first")
    check_request(method, box, layer, head)
    clipped = interventions.check_box(box, image.size) if box is not None else None
    conversation = [user_message(question.strip(), n_images=1)]
    with engine.locked(adapter=adapter) as model:
        processor = engine.processor
        max_new = GenerationSettings(max_new_tokens=max_new_tokens).within_model_cap(model).max_new_tokens
        inputs = to_model(build_inputs(processor, conversation, [image]), model)
        layout, notice = _layout_or_none(model, processor, inputs, [image])
        # Every intervention keeps the image's size and the prompt's tokens, so one layout
        # serves the maps before and after.
        map_layout = layout if with_maps else None
        before, capture_notice = ask_once(model, processor, inputs, [image], max_new, map_layout)
        image_after, after_inputs, removed = image, inputs, 0
        context: contextlib.AbstractContextManager = contextlib.nullcontext()
        if clipped is not None and method in interventions.PIXEL_METHODS:
            image_after = interventions.paint_boxes(image, [clipped], method)
            after_inputs = to_model(build_inputs(processor, conversation, [image_after]), model)
        elif clipped is not None:
            if layout is None:
                raise UnsupportedModelError(f"{method} needs to know where the image tokens sit, and {notice}; "
                                            "use a pixel method (blank or mean-colour) instead")
            positions = interventions.cells_in_box(layout, 0, clipped)
            removed = len(positions)
            image_after = interventions.shade_cells(image, layout, positions)
            if method == "mask-tokens":
                after_inputs = interventions.mask_positions(inputs, positions)
            else:
                context = interventions.mean_tokens(model, positions, layout.positions)
        elif head is not None:
            context = interventions.knock_out_head(model, int(layer), int(head))  # type: ignore[arg-type]
        else:
            context = interventions.knock_out_layer(model, int(layer))  # type: ignore[arg-type]
        with context:
            after, _ = ask_once(model, processor, after_inputs, [image_after], max_new, map_layout)
    kind = method if clipped is not None else ("head" if head is not None else "layer")
    outcome = AblationOutcome(kind, clipped, layer, head, before, after, image_after, removed,
                              notice or capture_notice)
    log.info("ablation %s: %r -> %r, p %.3f -> %.3f", kind, before.answer, after.answer, outcome.p_before,
             outcome.p_after)
    return outcome
