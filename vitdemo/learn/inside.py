"""One attention head of the language model, opened up with the numbers it really computed.

A forward pass records, at one decoder layer, the hidden states entering attention, the
rotary embeddings and the input to W^O (the concatenated head outputs). From them this
module recomputes Q, K, V, the scores QK^T / sqrt(d_k), the softmax and the weighted sum
for one head, and checks the result against what the model passed to W^O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitdemo.errors import UnsupportedModelError


@dataclass
class HeadWalkthrough:
    layer: int
    head: int
    tokens: list[str]  # every token of the prompt, as text
    q: np.ndarray  # (T, d_k) queries of this head, after the rotary embedding
    k: np.ndarray  # (T, d_k) keys (its key/value group's), after the rotary embedding
    v: np.ndarray  # (T, d_k) values
    scores: np.ndarray  # (T, T) QK^T / sqrt(d_k), -inf above the diagonal (causal)
    weights: np.ndarray  # (T, T) softmax of the scores, row by row
    output: np.ndarray  # (T, d_k) weights @ v: this head's output
    model_output: np.ndarray  # (T, d_k) the slice of W^O's input the model computed
    max_abs_difference: float  # |output - model_output|, the proof the numbers are real
    w_o_shape: tuple[int, int]  # W^O maps heads * d_k -> hidden
    n_heads: int
    mlp: dict  # the feed-forward block at one token: sizes and strongest units


def _decoder_layers(model) -> torch.nn.ModuleList:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].self_attn, "q_proj"):
        raise UnsupportedModelError(
            f"{type(model).__name__}: the walkthrough needs a Llama-style decoder (q_proj/k_proj/v_proj/o_proj)")
    return layers


@torch.inference_mode()
def walk_through_head(model, processor, inputs: dict, layer: int, head: int, mlp_token: int = -1) -> HeadWalkthrough:
    """Run the prompt once and open up `head` of decoder `layer`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layers = _decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be 0..{len(layers) - 1}, got {layer}")
    attn = layers[layer].self_attn
    n_heads = model.config.get_text_config().num_attention_heads
    n_kv = getattr(model.config.get_text_config(), "num_key_value_heads", n_heads)
    if not 0 <= head < n_heads:
        raise ValueError(f"head must be 0..{n_heads - 1}, got {head}")
    seen: dict = {}

    def before_attention(_module, args, kwargs):
        seen["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        seen["rope"] = kwargs["position_embeddings"]

    def before_w_o(_module, args):
        seen["concat"] = args[0]

    def mlp_hook(module, args, output):
        x = args[0][0, mlp_token]  # (hidden,)
        inner = module.act_fn(module.gate_proj(x)) * module.up_proj(x)  # (intermediate,)
        top = torch.topk(inner.abs(), k=min(8, inner.numel()))
        seen["mlp"] = {"hidden": int(x.numel()), "intermediate": int(inner.numel()),
                       "input_norm": float(x.norm()), "output_norm": float(output[0, mlp_token].norm()),
                       "top_units": top.indices.tolist(), "top_values": inner[top.indices].tolist()}

    handles = [attn.register_forward_pre_hook(before_attention, with_kwargs=True),
               attn.o_proj.register_forward_pre_hook(before_w_o)]
    mlp = getattr(layers[layer], "mlp", None)
    if mlp is not None and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "act_fn")):
        handles.append(mlp.register_forward_hook(mlp_hook))
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()

    hidden = seen["hidden"]  # (1, T, hidden)
    d_k = attn.head_dim
    T = hidden.shape[1]
    q = attn.q_proj(hidden).view(1, T, n_heads, d_k).transpose(1, 2)  # (1, heads, T, d_k)
    k = attn.k_proj(hidden).view(1, T, n_kv, d_k).transpose(1, 2)  # (1, kv_heads, T, d_k)
    v = attn.v_proj(hidden).view(1, T, n_kv, d_k).transpose(1, 2)  # (1, kv_heads, T, d_k)
    cos, sin = seen["rope"]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    group = head // (n_heads // n_kv)  # grouped-query attention: heads share K/V
    qh, kh, vh = q[0, head], k[0, group], v[0, group]  # (T, d_k) each
    scores = qh @ kh.T / d_k ** 0.5  # (T, T)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(causal, float("-inf"))
    weights = scores.softmax(-1)
    output = weights @ vh  # (T, d_k)
    model_output = seen["concat"][0].view(T, n_heads, d_k)[:, head]  # (T, d_k)
    diff = float((output - model_output).abs().max())
    ids = inputs["input_ids"][0].tolist()
    tokens = [processor.tokenizer.decode([i]) for i in ids]
    return HeadWalkthrough(
        layer=layer, head=head, tokens=tokens, q=qh.float().numpy(), k=kh.float().numpy(),
        v=vh.float().numpy(), scores=scores.float().numpy(), weights=weights.float().numpy(),
        output=output.float().numpy(), model_output=model_output.float().numpy(),
        max_abs_difference=diff, w_o_shape=tuple(attn.o_proj.weight.shape[::-1]), n_heads=n_heads,
        mlp=seen.get("mlp", {}))


@dataclass
class QueryView:
    """What one query token did in the head, ready to show as small tables."""

    query: int  # position of the query token
    keys: list[int]  # the key positions it attended to most, strongest first
    q_row: list[float]  # its query vector
    key_rows: list[list[float]]  # the chosen keys' vectors
    value_rows: list[list[float]]  # the chosen keys' values
    scores: list[float]  # QK^T / sqrt(d_k) for the chosen keys
    weights: list[float]  # softmax weights for the chosen keys (over all keys)
    rest_weight: float  # total weight on every other key
    output: list[float]  # the head's output at this query (over all keys)


def query_view(walk: HeadWalkthrough, query: int, top_k: int = 5) -> QueryView:
    T = len(walk.tokens)
    if not -T <= query < T:
        raise ValueError(f"query must be a token position 0..{T - 1}, got {query}")
    query %= T
    order = np.argsort(-walk.weights[query])[:top_k]
    keys = [int(k) for k in order if walk.weights[query, k] > 0]
    return QueryView(
        query=query, keys=keys, q_row=walk.q[query].tolist(),
        key_rows=[walk.k[k].tolist() for k in keys], value_rows=[walk.v[k].tolist() for k in keys],
        scores=[float(walk.scores[query, k]) for k in keys],
        weights=[float(walk.weights[query, k]) for k in keys],
        rest_weight=float(1.0 - walk.weights[query, keys].sum()),
        output=walk.output[query].tolist())
