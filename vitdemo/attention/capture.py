"""Capture text->image attention while generating, keeping only what the maps need.

Forward hooks on every decoder self-attention module slice the (B, heads, q, T)
attention weights down to the image-token columns as soon as a layer computes them:
(heads, n_text_prompt, n_img) rows of the prompt at prefill, then (heads, n_img) per new
token. The full T x T matrix of one layer lives only inside that layer's forward. The
vision tower's attention is reduced the same way (CLS row, mean row, running rollout).

Attention weights exist only on the eager path: the model is switched to eager for the
capturing pass and back afterwards, and a pass that returns no weights is an error,
never an empty map.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdemo.core import gen_thread
from vitdemo.attention.maps import AttentionResult, VisionAttention
from vitdemo.errors import GenerationError, UnsupportedModelError
from vitdemo.attention.layouts import ImageTokenLayout, build_layout

if TYPE_CHECKING:  # torch imports inside the functions: the UI imports this module before the model loads
    import torch

log = logging.getLogger(__name__)


class CaptureMemoryError(GenerationError):
    """Capturing attention for this input would need more memory than allowed."""


class NoAttentionWeightsError(UnsupportedModelError):
    """The model's attention returned no weights even after the switch to eager."""


@dataclass(frozen=True)
class CaptureSettings:
    """Limits and options of a capturing pass."""

    max_capture_bytes: int = 2 * 1024**3  # never plan more than this for capture (stored + transient)
    memory_fraction: float = 0.5  # of the device's currently free memory the capture may take
    vision: bool = True  # also capture vision-encoder attention and rollout
    rollout_residual: float = 0.5  # weight of the identity in each rollout step (Abnar & Zuidema)


@dataclass(frozen=True)
class CaptureEstimate:
    """Planned extra memory of a capture, in bytes."""

    stored: int  # text->image slices kept for the whole answer
    transient: int  # one layer's full eager attention at prefill (freed layer by layer)
    vision: int  # vision-encoder rows, running rollout and one layer's transient weights

    @property
    def total(self) -> int:
        return self.stored + self.transient + self.vision


def estimate_capture_bytes(*, n_layers: int, n_heads: int, n_image_tokens: int, n_prompt_text: int,
                           max_new_tokens: int, seq_len: int, compute_bytes: int = 4, store_bytes: int = 4,
                           vision_tiles: int = 0, vision_tokens: int = 0, vision_layers: int = 0,
                           vision_heads: int = 0) -> CaptureEstimate:
    """stored = L * H * n_img * (n_prompt_text + n_new) * store_bytes
    transient = H * T^2 * (compute_bytes + 4)   (one layer at prefill, T = prompt length: eager
                scores in the model dtype + the fp32 softmax; decode steps need only H * T)
    vision = tiles * (Lv * Hv * 2 * Nv * 4 + Nv^2 * 8 + Hv * Nv^2 * (compute_bytes + 4))"""
    stored = n_layers * n_heads * n_image_tokens * (n_prompt_text + max_new_tokens) * store_bytes
    transient = n_heads * seq_len * seq_len * (compute_bytes + 4)
    vision = vision_tiles * (vision_layers * vision_heads * 2 * vision_tokens * 4
                             + vision_tokens**2 * 8 + vision_heads * vision_tokens**2 * (compute_bytes + 4))
    return CaptureEstimate(stored, transient, vision)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the capture will live (the accelerator, else host RAM)."""
    import torch
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: only max_capture_bytes limits


# ----------------------------------------------------------------------------- modules


def decoder_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's self-attention modules, in forward order."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise UnsupportedModelError(f"attention maps cannot find the decoder layers of {type(model).__name__}")
    return [layer.self_attn for layer in layers]


def vision_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The vision encoder's attention modules, in forward order ([] if none found)."""
    vision_config = getattr(model.config, "vision_config", None)
    tower = None
    for module in model.modules():
        if module is not model and getattr(module, "config", None) is vision_config and vision_config is not None:
            tower = module
            break
    if tower is None:
        return []
    found = []
    for name, module in tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        in_stack = ".layers." in f".{name}" or ".blocks." in f".{name}"
        if leaf in ("self_attn", "attn") and in_stack:
            found.append(module)
    return found


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Switch every (sub)model to eager attention for the block, then restore."""
    config = model.config
    before: dict[str, Any] = {"": config._attn_implementation}
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None:
            before[key] = sub._attn_implementation
    changed = any(v != "eager" for v in before.values())
    if changed:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if changed:
            model.set_attn_implementation(before)


# ----------------------------------------------------------------------------- capture


def rollout_update(prev: np.ndarray | None, attn: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """`maps.rollout_step(prev, attn, residual)`, prev=None standing for the identity (first layer).

    Two costs of the plain call avoided (CLIP, 577 tokens, on the 2-core CPU, measured with
    bench/attention_capture.py): the first layer's product with the identity (an Nv^3 float64
    matmul per tile, ~35 ms) is skipped, bit for bit the same values; and the product runs
    in torch's thread pool, the one generation already uses, instead of numpy's BLAS pool,
    whose extra threads spin after each call and took ~0.06 s of CPU from generation."""
    import torch
    step = residual * np.eye(attn.shape[-1]) + (1 - residual) * attn.astype(np.float64)
    step = step / step.sum(-1, keepdims=True)
    if prev is None:
        return step
    return torch.matmul(torch.from_numpy(step), torch.from_numpy(prev)).numpy()


@dataclass
class _State:
    """Filled by the hooks (generation thread), read by the consumer."""

    n_layers: int
    layer_rows: list[torch.Tensor | None]
    answer: np.ndarray  # (max_new, L, H, n_img) preallocated
    prompt: np.ndarray  # (n_text, L, H, n_img)
    forwards: int = 0  # completed decoder forwards
    missing: int = 0  # attention modules that returned no weights
    vision_cls: list[np.ndarray] = field(default_factory=list)  # per layer (tiles, Hv, Nv)
    vision_mean: list[np.ndarray] = field(default_factory=list)
    vision_rollout: list[np.ndarray] = field(default_factory=list)  # [(tiles, Nv, Nv)] running product
    vision_missing: int = 0
    ready: threading.Condition = field(default_factory=threading.Condition)


@dataclass
class CaptureStep:
    """One new answer token and the capture so far."""

    index: int  # answer token index (special tokens are not counted)
    token: str  # decoded text of the token
    text: str  # the answer so far
    result: AttentionResult


class _QueueStreamer:
    """generate() streamer: the first put() is the prompt, then one token per put()."""

    def __init__(self) -> None:
        self.queue: queue.Queue[int | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.queue.put(int(value.reshape(-1)[0]))

    def end(self) -> None:
        self.queue.put(None)


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def plan_capture(model: Any, inputs: Any, layout: ImageTokenLayout, max_new_tokens: int,
                 settings: CaptureSettings) -> CaptureEstimate:
    """Estimate the capture's memory and refuse (CaptureMemoryError) if it does not fit."""
    import torch
    text = _text_config(model.config)
    ids = inputs["input_ids"]
    seq_len = int(ids.shape[-1])
    dtype = next(model.parameters()).dtype
    compute_bytes = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    vision = getattr(model.config, "vision_config", None)
    n_vision_tiles = n_vision_tokens = 0
    if settings.vision and vision is not None and getattr(vision, "image_size", None):
        n_vision_tiles = len(layout.tiles)
        n_vision_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    estimate = estimate_capture_bytes(
        n_layers=text.num_hidden_layers, n_heads=text.num_attention_heads, n_image_tokens=layout.n_tokens,
        n_prompt_text=seq_len - layout.n_tokens, max_new_tokens=max_new_tokens, seq_len=seq_len,
        compute_bytes=compute_bytes, vision_tiles=n_vision_tiles, vision_tokens=n_vision_tokens,
        vision_layers=getattr(vision, "num_hidden_layers", 0) or 0,
        vision_heads=getattr(vision, "num_attention_heads", 0) or 0)
    device = next(model.parameters()).device
    budget = min(settings.max_capture_bytes, int(settings.memory_fraction * free_memory_bytes(device)))
    if estimate.total > budget:
        raise CaptureMemoryError(
            f"attention maps for this input need about {estimate.total / 2**20:.0f} MiB "
            f"({layout.n_tokens} image tokens x {text.num_hidden_layers} layers x "
            f"{text.num_attention_heads} heads, {seq_len} prompt tokens, up to {max_new_tokens} new); "
            f"only {budget / 2**20:.0f} MiB are allowed. Answering without maps: use a smaller "
            "image or fewer new tokens to see them.")
    log.info("capture plan: %.1f MiB stored, %.1f MiB transient, %.1f MiB vision", estimate.stored / 2**20,
             estimate.transient / 2**20, estimate.vision / 2**20)
    return estimate


def stream_capture(model: Any, processor: Any, inputs: Any, images: Sequence[Any], gen_kwargs: dict[str, Any],
                   settings: CaptureSettings = CaptureSettings(), stop: threading.Event | None = None,
                   layout: ImageTokenLayout | None = None, keep_special: bool = False) -> Iterator[CaptureStep]:
    """Generate from `inputs` (batch size 1) and yield every answer token with the capture
    so far (special tokens such as end-of-sequence are skipped unless `keep_special`).
    The caller holds the engine lock. Raises UnsupportedModelError (unknown
    layout), CaptureMemoryError (too large) before generating anything."""
    import torch
    layout = layout or build_layout(model.config, processor, inputs, images)
    max_new = int(gen_kwargs.get("max_new_tokens", 64))
    plan_capture(model, inputs, layout, max_new, settings)
    attn_modules = decoder_attention_modules(model)
    vision_modules = vision_attention_modules(model) if settings.vision else []
    text = _text_config(model.config)
    n_layers, n_heads = len(attn_modules), int(text.num_attention_heads)
    ids = inputs["input_ids"].reshape(-1).cpu()  # (T,)
    is_image = np.zeros(len(ids), bool)
    is_image[layout.positions] = True
    text_pos = np.nonzero(~is_image)[0]
    index_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def indices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text positions on the device of a layer (layers may be spread over GPUs)."""
        if device not in index_cache:
            index_cache[device] = (torch.as_tensor(layout.positions, device=device),
                                   torch.as_tensor(text_pos, device=device))
        return index_cache[device]
    state = _State(n_layers, [None] * n_layers,
                   np.zeros((max_new, n_layers, n_heads, layout.n_tokens), np.float32),
                   np.zeros((len(text_pos), n_layers, n_heads, layout.n_tokens), np.float32))

    def text_hook(layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                state.missing += 1
                return None
            w = weights[0]  # (H, q, K)
            img_idx, text_idx = indices(w.device)
            if w.shape[1] > 1:  # prefill: every prompt row
                rows = w.index_select(1, text_idx).index_select(2, img_idx)  # (H, n_text, n_img)
                state.prompt[:, layer] = rows.float().permute(1, 0, 2).cpu().numpy()  # (n_text, H, n_img)
            state.layer_rows[layer] = w[:, -1].index_select(1, img_idx)  # (H, n_img)
            if layer == n_layers - 1 and state.forwards < max_new:
                step = torch.stack([r.to(w.device) for r in state.layer_rows])  # (L, H, n_img)
                state.answer[state.forwards] = step.float().cpu().numpy()
                with state.ready:
                    state.forwards += 1
                    state.ready.notify_all()
            return (output[0], None, *output[2:])  # drop the full weights now
        return hook

    def vision_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            state.vision_missing += 1
            return None
        w = weights.float()  # (tiles, Hv, Nv, Nv)
        state.vision_cls.append(w[:, :, 0, :].cpu().numpy())  # (tiles, Hv, Nv)
        state.vision_mean.append(w.mean(2).cpu().numpy())  # (tiles, Hv, Nv)
        head_mean = w.mean(1).cpu().numpy()  # (tiles, Nv, Nv)
        prev = state.vision_rollout[0] if state.vision_rollout else None  # None: first layer
        state.vision_rollout[:] = [rollout_update(prev, head_mean, settings.rollout_residual)]
        return None

    handles = [m.register_forward_hook(text_hook(i)) for i, m in enumerate(attn_modules)]
    handles += [m.register_forward_hook(vision_hook) for m in vision_modules]
    streamer = _QueueStreamer()
    stop = stop or threading.Event()  # the caller's ("the user pressed Stop"): only read here
    halt = threading.Event()  # ours: "the consumer went away"; never leaks into the caller's event
    failure: list[BaseException] = []

    def run() -> None:
        try:
            from vitdemo.chat.conversation import stopping_criteria

            with torch.inference_mode():
                model.generate(**inputs, **gen_kwargs, streamer=streamer,
                               stopping_criteria=stopping_criteria(stop, halt))
        except BaseException as err:  # handed to the consumer thread
            failure.append(err)
            streamer.end()

    tokenizer = getattr(processor, "tokenizer", processor)
    special = set(tokenizer.all_special_ids)
    prompt_tokens = [tokenizer.decode([int(t)]) for t in ids[text_pos].tolist()]
    answer_ids: list[int] = []
    answer_tokens: list[str] = []
    n_kept = 0  # answer rows kept so far: state.answer[:n_kept], compacted in place
    result = AttentionResult(layout, answer_ids, answer_tokens, prompt_tokens, text_pos,
                             state.answer[:0], state.prompt)
    with eager_attention(model):
        done = gen_thread.submit(run)
        try:
            step_index = 0
            while True:
                token_id = streamer.queue.get()
                if token_id is None:
                    break
                with state.ready:  # the forward that produced this token has finished its hooks
                    if not state.ready.wait_for(lambda: state.forwards > step_index or state.missing > 0,
                                                timeout=60):
                        log.warning("capture: no attention rows for step %d after 60 s", step_index)
                if state.missing:
                    raise NoAttentionWeightsError(
                        f"{type(model).__name__} returned no attention weights from {state.missing} attention "
                        "call(s) even in eager mode; refusing to show empty maps")
                if step_index == 0 and vision_modules and state.vision_missing == 0 and settings.vision:
                    result.vision = _vision_result(state, layout)
                elif step_index == 0 and settings.vision:
                    result.vision_error = (f"the vision encoder of {layout.architecture} does not return "
                                           "attention weights; its view is not available")
                if keep_special or token_id not in special:
                    answer_ids.append(token_id)
                    answer_tokens.append(tokenizer.decode([token_id]))
                    if n_kept != step_index:
                        # A special token was skipped: move this step's row down to the next kept
                        # slot. Safe in place: the hooks only write rows >= state.forwards >
                        # step_index, and the views handed out so far cover only rows < n_kept.
                        state.answer[n_kept] = state.answer[step_index]
                    n_kept += 1
                    # The whole answer again each token (O(n), as the chat's _Detokenizer does), kept
                    # on purpose: an incremental decode is not always equal (a partial UTF-8 character
                    # shows as U+FFFD, space clean-up, SentencePiece's leading-space strip). Measured:
                    # 9 ms of CPU in all for 256 tokens, 0.13 s for 1024 (tiny byte-level BPE).
                    result.answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
                    # A view, not a copy: constant cost per token (a copy of every kept row made
                    # the capture quadratic in the answer length). Rows below n_kept never change
                    # again, so what earlier steps handed out stays valid; read-only, so a consumer
                    # cannot write into the buffer the capture is still filling.
                    view = state.answer[:n_kept]  # (n_answer, L, H, n_img)
                    view.flags.writeable = False
                    result.answer_attn = view
                    yield CaptureStep(len(answer_ids) - 1, answer_tokens[-1], result.answer, result)
                step_index += 1
        finally:
            halt.set()
            concurrent.futures.wait([done])
            for h in handles:
                h.remove()
            if n_kept < len(state.answer):
                # Done: keep a compact copy so the result does not pin the max_new_tokens buffer
                # (same values; the old code's last step made the same copy).
                result.answer_attn = state.answer[:n_kept].copy()
    if failure:
        from vitdemo.chat.conversation import generation_failure

        raise generation_failure(failure[0], n_input=int(inputs["input_ids"].shape[-1]),
                                 max_new_tokens=int(gen_kwargs.get("max_new_tokens", 0)), n_images=len(images),
                                 device=str(model.device), with_maps=True) from failure[0]


def _vision_result(state: _State, layout: ImageTokenLayout) -> VisionAttention | None:
    if not state.vision_mean:
        return None
    mean_rows = np.stack(state.vision_mean, axis=1)  # (tiles, Lv, Hv, Nv)
    n_tokens = mean_rows.shape[-1]
    side = int(np.sqrt(n_tokens))
    n_prefix = n_tokens - side * side  # CLS (CLIP) or nothing (SigLIP)
    if n_prefix not in (0, 1):
        log.warning("vision encoder has %d tokens, not a square grid (+CLS); no vision view", n_tokens)
        return None
    rollout = state.vision_rollout[0]  # (tiles, Nv, Nv)
    first = rollout[:, 0, :] if n_prefix else rollout.mean(1)  # (tiles, Nv)
    return VisionAttention(
        cls_rows=np.stack(state.vision_cls, axis=1) if n_prefix else None,
        mean_rows=mean_rows,
        rollout=np.stack([first, rollout.mean(1)], axis=1).astype(np.float32),  # (tiles, 2, Nv)
        n_prefix=n_prefix,
        grid=(side, side),
    )


def capture(model: Any, processor: Any, inputs: Any, images: Sequence[Any], gen_kwargs: dict[str, Any],
            settings: CaptureSettings = CaptureSettings(), keep_special: bool = False) -> AttentionResult:
    """Run `stream_capture` to the end and return the result."""
    result = None
    for step in stream_capture(model, processor, inputs, images, gen_kwargs, settings, keep_special=keep_special):
        result = step.result
    if result is None:
        raise GenerationError("the model produced no answer tokens, so there are no maps")
    return result
