"""Stack the processed inputs of several requests into one left-padded batch.

Each request goes through the processor on its own (in its caller's thread, so a bad
image or an overlong prompt fails that request alone). The batch is then built from
those tensors: token-level tensors (input ids, attention mask, token types) are padded
on the left, so every row's last prompt token sits in the last column and the new
tokens line up; image tensors are stacked along their first dimension, padded with
zeros where their other dimensions differ (what the processors themselves do for a
batch: Idefics3 pads images to the largest and marks real pixels in its mask; an
all-zero image slot is a padding slot to it). Position ids are not built here:
`generate` derives them from the attention mask (and Qwen2-VL its rope indices).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

# Tensors of shape (1, T) that follow the tokens: left-padded, with these fill values.
TOKEN_KEYS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}


def compatible_key(inputs: Mapping[str, Any]) -> tuple[str, ...]:
    """Requests can share a batch only if the processor gave them the same tensors (a
    text-only request has no pixel values: it batches with other text-only ones)."""
    return tuple(sorted(k for k, v in inputs.items() if isinstance(v, torch.Tensor)))


def collate(inputs: Sequence[Mapping[str, Any]], pad_token_id: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(batch, left padding of each row). All rows must have the same tensor keys."""
    keys = compatible_key(inputs[0])
    for i, item in enumerate(inputs):
        if compatible_key(item) != keys:
            raise ValueError(f"row {i} has tensors {compatible_key(item)}, row 0 has {keys}: not one batch")
    lengths = [int(item["input_ids"].shape[-1]) for item in inputs]
    width = max(lengths)
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [item[key] for item in inputs]
        if key in TOKEN_KEYS:
            fill = pad_token_id if TOKEN_KEYS[key] is None else TOKEN_KEYS[key]
            batch[key] = torch.cat([_pad_left(v, width, fill) for v in values], dim=0)  # (B, T)
        else:
            batch[key] = _stack_padded(key, values)
    return batch, [width - n for n in lengths]


def _pad_left(value: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    if value.dim() != 2 or value.shape[0] != 1:
        raise ValueError(f"token tensor of shape {tuple(value.shape)}: expected (1, T)")
    missing = width - value.shape[1]
    if missing == 0:
        return value
    pad = torch.full((1, missing), fill, dtype=value.dtype, device=value.device)
    return torch.cat([pad, value], dim=1)  # (1, width)


def _stack_padded(key: str, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding every other dimension to the largest."""
    dims = {v.dim() for v in values}
    if len(dims) != 1:
        raise ValueError(f"{key}: rows have {sorted(dims)} dimensions, cannot stack")
    shape = [max(int(v.shape[d]) for v in values) for d in range(1, values[0].dim())]
    padded = []
    for v in values:
        if list(v.shape[1:]) != shape:
            out = torch.zeros((v.shape[0], *shape), dtype=v.dtype, device=v.device)
            out[tuple(slice(0, n) for n in v.shape)] = v  # real values top-left, zeros after
            v = out
        padded.append(v)
    return torch.cat(padded, dim=0)


def to_model(inputs: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Tensors to the model's device; floating ones (pixels) to its compute dtype."""
    weight = model.get_input_embeddings().weight
    moved: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(weight.device)
            if value.is_floating_point():
                value = value.to(weight.dtype)
        moved[key] = value
    return moved
