"""Relevancy maps: gradient-weighted attention (Chefer et al. 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").

Where the attention map shows where a token's query *looked*, relevancy weighs every
attention edge by how much it moved the logit of the chosen answer token. One forward
pass over prompt + the answer tokens before the explained one (eager attention, so the
decoder layers return their (H, T, T) probabilities A), one backward pass from the
explained token's logit at the position that predicts it, then per decoder layer

    Ā = mean over heads of (dA ⊙ A)⁺        (T, T), negative evidence clamped away
    R ← R + Ā R,   R₀ = I                    (the self-attention rule)

and the map is row p of R (p: the predicting position) at the image tokens, placed on
each image's grid by the layout (the same grids as `AttentionResult.grids()`). Only row p
is needed, so R is never formed: r = e_p, then r ← r + r Ā_l for l = L … 1, which equals
e_p (I + Ā_L) … (I + Ā_1).

The pass touches no model state that outlives it: gradients go to the attention tensors
only (`torch.autograd.grad`, parameters' `.grad` untouched), `requires_grad` flags are left
as they were, the pass runs in eval mode (no dropout) and the caller's mode comes back, the
hooks are removed and the attention implementation restored in `finally`. The caller holds
the engine lock (the switch to eager is model-wide), as for a capture.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdemo.attention.capture import (
    CaptureMemoryError,
    NoAttentionWeightsError,
    decoder_attention_modules,
    eager_attention,
    free_memory_bytes,
)
from vitdemo.attention.layouts import ImageTokenLayout
from vitdemo.errors import GenerationError, InputError

if TYPE_CHECKING:  # torch imports inside the functions: UI modules may import this one before the model loads
    import torch

log = logging.getLogger(__name__)

# Tensors of shape (1, T) that follow the tokens: extended with these values for answer tokens.
_TOKEN_FILL = {"attention_mask": 1, "token_type_ids": 0, "mm_token_type_ids": 0}

METHOD = "gradient-weighted attention relevancy (Chefer et al. 2021), all layers, heads averaged"


@dataclass(frozen=True)
class RelevancySettings:
    """Limits of a relevancy pass."""

    max_bytes: int = 2 * 1024**3  # never plan more than this for the kept attention, its graph and gradients
    memory_fraction: float = 0.5  # of the device's currently free memory the pass may take


@dataclass
class Relevancy:
    """The relevancy of one answer token to the image tokens of its prompt."""

    vector: np.ndarray  # (n_image_tokens,) float32, row p of R at layout.positions (sorted positions)
    maps: list[np.ndarray]  # one (rows, cols) float32 map per image: layout.image_maps(vector)
    token_id: int  # the explained token
    token: str  # its decoded text
    position: int  # sequence position whose logits predict it (prompt + earlier answer tokens - 1)
    logit: float  # the explained logit


def estimate_relevancy_bytes(*, n_layers: int, n_heads: int, seq_len: int, compute_bytes: int = 4) -> int:
    """Extra memory of a relevancy pass over T = seq_len tokens: every layer keeps its
    (H, T, T) attention for the backward pass (twice: the softmax output and the matmul's
    saved input, in the compute dtype, plus the fp32 softmax), its gradient comes back in
    the compute dtype, and Ā is (T, T) fp32 per layer."""
    per_layer = n_heads * seq_len**2 * (3 * compute_bytes + 4) + seq_len**2 * 4
    return n_layers * per_layer


def relevancy_maps(model: Any, processor: Any, inputs: Mapping[str, Any], answer_ids: Sequence[int],
                   layout: ImageTokenLayout, token_index: int = 0,
                   settings: RelevancySettings = RelevancySettings()) -> list[np.ndarray]:
    """One (rows, cols) relevancy map per image for answer token `token_index`.

    `inputs` is the processed prompt (batch size 1, on the model's device), `answer_ids`
    the answer's token ids (those after `token_index` are not needed), `layout` the
    prompt's `build_layout`. See `explain_token` for the details.
    """
    return explain_token(model, processor, inputs, answer_ids, layout, token_index, settings).maps


def explain_token(model: Any, processor: Any, inputs: Mapping[str, Any], answer_ids: Sequence[int],
                  layout: ImageTokenLayout, token_index: int = 0,
                  settings: RelevancySettings = RelevancySettings()) -> Relevancy:
    """Relevancy of the image tokens for answer token `token_index` (see the module doc).

    Raises InputError (batch, index or token id out of range), CaptureMemoryError (too
    large for the memory allowed), NoAttentionWeightsError (no weights even in eager).
    """
    import torch

    ids = _check_inputs(model, inputs, answer_ids, layout, token_index)
    n_prompt = int(ids.shape[-1])
    prefix = [int(t) for t in answer_ids[:token_index]]  # answer tokens before the explained one
    seq_len = n_prompt + len(prefix)
    modules = decoder_attention_modules(model)
    _plan(model, len(modules), seq_len, settings)
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    weights: list[torch.Tensor | None] = [None] * len(modules)

    def keep(layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            # Eager attention returns (attn_output, attn_weights (B, H, q, K)); keep the
            # tensor itself (it is in the graph) to ask autograd for its gradient.
            found = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if found is None:
                raise NoAttentionWeightsError(
                    f"{type(model).__name__}: decoder layer {layer} returned no attention weights even in "
                    "eager mode; relevancy needs them")
            weights[layer] = found
        return hook

    def graph_from_embeddings(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        # A model with frozen parameters (requires_grad False) builds no graph; starting one
        # at the token embeddings reaches every attention tensor without touching a parameter.
        return None if output.requires_grad else output.detach().requires_grad_(True)

    # Callers may be in inference mode (its tensors cannot join a graph): leave it, and
    # copy the inputs into ordinary tensors.
    modes = [(m, m.training) for m in model.modules()]  # per module: a caller may freeze some in eval
    with torch.inference_mode(False), torch.enable_grad(), eager_attention(model):
        batch = _extend(inputs, prefix, n_prompt)
        handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
        handles.append(model.get_input_embeddings().register_forward_hook(graph_from_embeddings))
        try:
            model.eval()  # no dropout: the map explains the model the user talks to
            out = model(**batch, use_cache=False, logits_to_keep=1)
            logits = out.logits[0, -1]  # (V,) at the last position: the one that predicts the token
            target = int(answer_ids[token_index])
            logit = logits[target]
            missing = [i for i, w in enumerate(weights) if w is None]
            if missing:
                raise NoAttentionWeightsError(f"decoder layers {missing} of {type(model).__name__} did not run "
                                              "their attention module; relevancy cannot be computed")
            grads = torch.autograd.grad(logit, weights, allow_unused=True)
            row = _relevancy_row([(w[0], g[0] if g is not None else None)
                                  for w, g in zip(weights, grads)], seq_len - 1)  # (T,)
        finally:
            for module, training in modes:
                module.training = training
            for h in handles:
                h.remove()
            weights.clear()  # drop the graph now, not when the closures go
    vector = row[layout.positions].astype(np.float32)  # (n_image_tokens,)
    if not np.all(np.isfinite(vector)):  # e.g. a half-precision overflow in the backward pass
        raise GenerationError(f"the relevancy map has {int((~np.isfinite(vector)).sum())} non-finite values over "
                              f"{layout.n_tokens} image tokens; try the model in float32")
    tokenizer = getattr(processor, "tokenizer", processor)
    token = tokenizer.decode([target])
    log.debug("relevancy of token %d (%r, id %d) at position %d over %d layers x %d heads",
              token_index, token, target, seq_len - 1, len(modules), int(text.num_attention_heads))
    return Relevancy(vector, layout.image_maps(vector), target, token, seq_len - 1, float(logit.detach()))


def _relevancy_row(layers: Sequence[tuple[torch.Tensor, torch.Tensor | None]], position: int) -> np.ndarray:
    """Ā per layer from (A, dA) (each (H, T, T)) and the row recursion, on the model's devices."""
    import torch

    bars = []
    for attn, grad in layers:
        if grad is None:  # a layer the logit does not depend on adds nothing
            bars.append(None)
            continue
        bars.append((grad.float() * attn.detach().float()).clamp(min=0).mean(0))  # (H, T, T) -> (T, T)
    n = layers[0][0].shape[-1]
    row = torch.zeros(n, dtype=torch.float32, device=layers[-1][0].device)
    row[position] = 1.0
    for bar in reversed(bars):
        if bar is not None:
            row = row + row.to(bar.device) @ bar  # (T,) @ (T, T): r (I + Ā)
    return row.cpu().numpy()


def _check_inputs(model: Any, inputs: Mapping[str, Any], answer_ids: Sequence[int], layout: ImageTokenLayout,
                  token_index: int) -> Any:
    ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
    if ids is None or ids.dim() != 2 or ids.shape[0] != 1:
        shape = None if ids is None else tuple(ids.shape)
        raise InputError(f"relevancy takes one prompt's input_ids of shape (1, T), got {shape}")
    if not 0 <= token_index < len(answer_ids):
        raise InputError(f"answer token {token_index} does not exist: the answer has {len(answer_ids)} token(s)")
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    bad = [int(t) for t in answer_ids[:token_index + 1] if vocab is not None and not 0 <= int(t) < vocab]
    if bad:
        raise InputError(f"answer token ids {bad} are outside the vocabulary of {vocab} tokens")
    if layout.n_tokens == 0:
        raise InputError("the prompt has no image tokens, so there is no relevancy map")
    if int(layout.positions.max()) >= ids.shape[-1]:
        raise InputError(f"the layout places an image token at position {int(layout.positions.max())} but the "
                         f"prompt has {ids.shape[-1]} tokens: layout and inputs are of different prompts")
    return ids


def _extend(inputs: Mapping[str, Any], prefix: Sequence[int], n_prompt: int) -> dict[str, Any]:
    """Prompt + answer prefix as ordinary tensors (copies: inference-mode tensors cannot be
    saved for backward, and the caller's inputs stay as they were)."""
    import torch

    batch: dict[str, Any] = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            batch[key] = value
            continue
        value = value.clone()
        if key == "input_ids" and prefix:
            more = torch.tensor([list(prefix)], dtype=value.dtype, device=value.device)
            value = torch.cat([value, more], dim=1)  # (1, T + k)
        elif key in _TOKEN_FILL and value.dim() == 2 and value.shape[-1] == n_prompt and prefix:
            more = torch.full((1, len(prefix)), _TOKEN_FILL[key], dtype=value.dtype, device=value.device)
            value = torch.cat([value, more], dim=1)  # (1, T + k)
        batch[key] = value
    return batch


def _plan(model: Any, n_layers: int, seq_len: int, settings: RelevancySettings) -> None:
    import torch

    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    dtype = next(model.parameters()).dtype
    compute_bytes = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    n_heads = int(text.num_attention_heads)
    need = estimate_relevancy_bytes(n_layers=n_layers, n_heads=n_heads, seq_len=seq_len, compute_bytes=compute_bytes)
    budget = min(settings.max_bytes, int(settings.memory_fraction * free_memory_bytes(next(model.parameters()).device)))
    if need > budget:
        raise CaptureMemoryError(
            f"a relevancy map for this input needs about {need / 2**20:.0f} MiB ({n_layers} layers x {n_heads} "
            f"heads x {seq_len}^2 attention kept for the backward pass); only {budget / 2**20:.0f} MiB are "
            "allowed. Use a smaller image, a shorter conversation or an earlier answer token.")
