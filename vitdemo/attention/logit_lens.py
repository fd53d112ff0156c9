"""Logit lens: what each decoder layer's residual stream would say if the model stopped there.

One forward pass with `output_hidden_states=True` over the prompt plus a finished answer
gives the residual stream after every decoder layer. Each is decoded the way the model
decodes its last one: the decoder's final norm, then `lm_head`, then a softmax.

Layer numbering (the same everywhere in this module and in the JSON):
- 0: the embeddings, the input of the first decoder layer (for image tokens: the
  projector's output, i.e. what the vision side hands the language model);
- l (1..n_layers): the output of decoder layer l;
- n_layers: the last layer, whose decoding *is* the model's own next-token distribution
  (`run_lens` checks that it reproduces the model's logits, so a wrong norm or head fails
  loudly instead of showing nonsense).

Two views:
- `answer_lens`: for answer token k, the position that *predicts* it (the last prompt
  position for k = 0, answer token k-1 after that; the convention of `maps.py`), per layer
  the top-k tokens with their probabilities and the probability of the token actually written.
- `patch_words`: at one layer, the top token each image token decodes to, as a
  (rows, cols) grid per image (the layout's map grid), ready to draw on the image
  (`lens_picture.draw_patch_words`).

Supported: the architectures of `LENS_HEADS` (keyed by config.model_type); anything else
raises UnsupportedModelError naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdemo.attention.layouts import Box, ImageTokenLayout
from vitdemo.core.engine import KEEP
from vitdemo.errors import InputError, UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from vitdemo.core.engine import Engine

log = logging.getLogger(__name__)

# Where the decoder's final norm and the output head sit, per config.model_type
# (attribute paths from the ...ForConditionalGeneration model, transformers 5).
LENS_HEADS: dict[str, tuple[str, str]] = {
    "llava": ("model.language_model.norm", "lm_head"),
    "idefics3": ("model.text_model.norm", "lm_head"),
    "smolvlm": ("model.text_model.norm", "lm_head"),
    "qwen2_vl": ("model.language_model.norm", "lm_head"),
    "qwen2_5_vl": ("model.language_model.norm", "lm_head"),
}
TOP_K = 5  # tokens listed per layer
DECODE_CHUNK = 256  # positions decoded at once: bounds the (chunk, vocab) probability block
# Tolerance of the head check, relative to the largest |logit|: float32 recomputes the
# logits almost exactly; half precision differs in the last bits.
CHECK_TOL = {"float32": 1e-4, "other": 2e-2}


@dataclass(frozen=True)
class LensHead:
    """The decoder's final norm and output head, found on a model."""

    architecture: str  # config.model_type, for messages
    norm: Any  # torch module: the final norm (RMSNorm / LayerNorm)
    lm_head: Any  # torch module: hidden -> vocabulary logits
    norm_path: str
    head_path: str


def _attribute(model: Any, path: str) -> Any:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_lens_head(model: Any) -> LensHead:
    """The final norm and lm_head of a supported model (UnsupportedModelError otherwise)."""
    config = getattr(model, "config", None)
    arch = getattr(config, "model_type", None)
    if arch not in LENS_HEADS:
        raise UnsupportedModelError(
            f"the logit lens does not support the architecture {arch!r} ({type(model).__name__}); "
            f"supported: {', '.join(sorted(LENS_HEADS))}")
    norm_path, head_path = LENS_HEADS[arch]
    norm, head = _attribute(model, norm_path), _attribute(model, head_path)
    missing = [p for p, m in ((norm_path, norm), (head_path, head)) if m is None or not callable(m)]
    if missing:
        raise UnsupportedModelError(
            f"{arch} ({type(model).__name__}): the logit lens expects modules at {', '.join(missing)}, "
            "which this model does not have (a wrapped or changed model?)")
    return LensHead(arch, norm, head, norm_path, head_path)


def _text_layers(config: Any) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.num_hidden_layers)


def _module_device(module: Any, fallback: Any) -> Any:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return fallback if param is None else param.device


@dataclass
class LensPass:
    """The residual stream of one forward pass over prompt + answer (batch size 1)."""

    head: LensHead
    hidden_states: tuple[Any, ...]  # n_layers + 1 tensors (T, d): see the module docstring
    prompt_len: int  # tokens of the prompt; answer token k sits at prompt_len + k
    answer_ids: list[int]
    last_is_normed: bool  # transformers hands back the last state after the final norm
    check_diff: float  # max |lens logits - model logits| at the last layer (the head check)

    @property
    def n_layers(self) -> int:
        """Decoder layers; layer indices run 0 (embeddings) .. n_layers."""
        return len(self.hidden_states) - 1

    def layer_index(self, layer: int) -> int:
        """A layer index in 0..n_layers (negative counts from the end, -1 = the last)."""
        n = self.n_layers + 1
        if not -n <= layer < n:
            raise InputError(f"layer {layer} does not exist: the lens has layers 0 (embeddings) "
                             f"to {self.n_layers}")
        return layer % n

    def predicting_position(self, index: int) -> int:
        """Sequence position whose output predicts answer token `index`."""
        if not 0 <= index < len(self.answer_ids):
            raise InputError(f"answer token {index} does not exist; the answer has {len(self.answer_ids)} tokens")
        return self.prompt_len - 1 + index

    def logits(self, layer: int, positions: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(len(positions), vocab) float32 lens logits of one layer at sequence positions."""
        import torch

        layer = self.layer_index(layer)
        state = self.hidden_states[layer]
        index = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=state.device)
        h = state.index_select(0, index)  # (n, d)
        with torch.inference_mode():
            if not (layer == self.n_layers and self.last_is_normed):
                h = self.head.norm(h.to(_module_device(self.head.norm, h.device)))
            out = self.head.lm_head(h.to(_module_device(self.head.lm_head, h.device)))
        return out.float()

    def probs(self, layer: int, positions: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(len(positions), vocab) softmax of `logits`."""
        return self.logits(layer, positions).softmax(dim=-1)


def _extend_inputs(inputs: Mapping[str, Any], answer_ids: Sequence[int]) -> dict[str, Any]:
    """Prompt inputs with the answer appended: ids, mask (ones) and token types (zeros: text)."""
    import torch

    ids = inputs["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise InputError(f"the logit lens reads one prompt at a time; input_ids have shape {tuple(ids.shape)}")
    n_prompt = int(ids.shape[1])
    extra = torch.as_tensor(list(answer_ids), dtype=ids.dtype, device=ids.device).reshape(1, -1)  # (1, K)
    out = dict(inputs)
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or tuple(value.shape) != (1, n_prompt):
            continue  # not a per-token tensor (pixels, image grids)
        fill = extra if key == "input_ids" else torch.full_like(extra, 1 if key == "attention_mask" else 0,
                                                              dtype=value.dtype)
        out[key] = torch.cat([value, fill.to(value.dtype)], dim=1)  # (1, T + K)
    return out


def run_lens(model: Any, inputs: Mapping[str, Any], answer_ids: Sequence[int]) -> LensPass:
    """One forward pass with hidden states over the prompt `inputs` (processor output,
    batch 1, already on the model's device) followed by `answer_ids` (a finished answer's
    token ids, special tokens left out; may be empty when only image tokens are read)."""
    import torch

    head = find_lens_head(model)
    vocab = int(head.lm_head.weight.shape[0]) if hasattr(head.lm_head, "weight") else None
    answer_ids = [int(t) for t in answer_ids]
    bad = [t for t in answer_ids if t < 0 or (vocab is not None and t >= vocab)]
    if bad:
        raise InputError(f"answer token ids {bad[:5]} are outside the vocabulary (0..{None if vocab is None else vocab - 1})")
    full = _extend_inputs(inputs, answer_ids)
    n_prompt = int(inputs["input_ids"].shape[1])
    with torch.inference_mode():
        out = model(**full, output_hidden_states=True, use_cache=False)
    states = out.hidden_states
    n_layers = _text_layers(model.config)
    if states is None or len(states) != n_layers + 1:
        raise UnsupportedModelError(
            f"{head.architecture}: expected {n_layers + 1} hidden states (embeddings + {n_layers} layers), "
            f"got {None if states is None else len(states)}")
    hidden = tuple(s[0] for s in states)  # each (T, d)
    # Which positions to check against the model's logits: every answer-predicting one, or the last.
    check = list(range(n_prompt - 1, n_prompt - 1 + max(len(answer_ids), 1)))
    reference = out.logits[0, check].float()  # (n_check, vocab)
    del out
    diffs = {}
    for normed in (True, False):  # transformers 5 ties the last hidden state to the normed output
        decoded = LensPass(head, hidden, n_prompt, answer_ids, normed, 0.0).logits(n_layers, check)
        diffs[normed] = float((decoded - reference.to(decoded.device)).abs().max())
    normed = min(diffs, key=diffs.get)
    scale = max(1.0, float(reference.abs().max()))
    tol = CHECK_TOL["float32" if hidden[0].dtype == torch.float32 else "other"] * scale
    if diffs[normed] > tol:
        raise UnsupportedModelError(
            f"{head.architecture}: the final norm ({head.norm_path}) and head ({head.head_path}) do not "
            f"reproduce the model's logits (max difference {diffs[normed]:.3g}, tolerance {tol:.3g}); "
            "this model post-processes its logits in a way the logit lens does not know")
    log.debug("logit lens: %d layers, %d prompt + %d answer tokens, head check %.2g", n_layers,
              n_prompt, len(answer_ids), diffs[normed])
    return LensPass(head, hidden, n_prompt, answer_ids, normed, diffs[normed])


# ----------------------------------------------------------------------------- decoding


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token's text as the answer shows it; escaped (`'\\x16'`, `' '`) when it is blank or holds
    control characters (byte-level pieces), so every cell and list entry shows something."""
    text = tokenizer.decode([int(token_id)])
    return text if text.strip() and text.isprintable() else repr(text)


@dataclass
class TokenLens:
    """Layer by layer, what the position predicting one answer token decodes to."""

    index: int  # answer-token index
    token_id: int
    token: str  # decoded text of the answer token
    position: int  # sequence position that predicts it
    top_ids: np.ndarray  # (n_layers + 1, top_k) token ids, most probable first
    top_probs: np.ndarray  # (n_layers + 1, top_k) their probabilities
    top_tokens: list[list[str]]  # (n_layers + 1, top_k) their decoded text
    token_probs: np.ndarray  # (n_layers + 1,) probability of the answer token itself

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "token": self.token,
            "id": self.token_id,
            "top": [[[word, round(float(p), 6)] for word, p in zip(words, probs)]
                    for words, probs in zip(self.top_tokens, self.top_probs)],
            "token_prob": [round(float(p), 6) for p in self.token_probs],
        }


def answer_lens(lens: LensPass, tokenizer: Any, indices: Sequence[int] | None = None,
                top_k: int = TOP_K) -> list[TokenLens]:
    """Per answer token (all, or `indices`), per layer, the top-k decoded tokens."""
    import torch

    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    indices = list(range(len(lens.answer_ids))) if indices is None else [int(i) for i in indices]
    if not indices:
        return []
    positions = [lens.predicting_position(i) for i in indices]
    targets = torch.as_tensor([lens.answer_ids[i] for i in indices])
    top_ids, top_probs, token_probs = [], [], []
    for layer in range(lens.n_layers + 1):
        probs = lens.probs(layer, positions).cpu()  # (n, vocab)
        values, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (n, k) sorted descending
        top_ids.append(ids.numpy())
        top_probs.append(values.numpy())
        token_probs.append(probs.gather(1, targets[:, None])[:, 0].numpy())  # (n,)
    ids_arr = np.stack(top_ids, axis=1)  # (n, layers + 1, k)
    probs_arr = np.stack(top_probs, axis=1)  # (n, layers + 1, k)
    tok_arr = np.stack(token_probs, axis=1)  # (n, layers + 1)
    out = []
    for j, index in enumerate(indices):
        out.append(TokenLens(
            index=index, token_id=lens.answer_ids[index], token=token_text(tokenizer, lens.answer_ids[index]),
            position=positions[j], top_ids=ids_arr[j], top_probs=probs_arr[j],
            top_tokens=[[token_text(tokenizer, t) for t in row] for row in ids_arr[j]],
            token_probs=tok_arr[j]))
    return out


@dataclass
class PatchWords:
    """At one layer, the top decoded token of each image token of one image, on its grid."""

    image: int
    layer: int
    box: Box  # region of the original image the grid covers
    token_ids: np.ndarray  # (rows, cols) top token id per cell
    probs: np.ndarray  # (rows, cols) its probability
    words: list[list[str]]  # (rows, cols) its text, stripped

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.token_ids.shape[0]), int(self.token_ids.shape[1])

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "words": self.words,
                "probs": self.probs.astype(float).round(4).tolist()}


def cell_positions(layout: ImageTokenLayout, image: int) -> np.ndarray:
    """(rows, cols) sequence position of the image token of each cell of an image's map grid.

    Several tiles (Idefics3) form one mosaic of their local tiles; a global view has no
    cell of its own there and is left out unless it is the image's only tile.
    """
    grid = layout.grid(image)
    cells = np.full((grid.rows, grid.cols), -1, dtype=np.int64)
    tiles = layout.tiles_of(image)
    for t in tiles:
        if t.is_global and len(tiles) > 1:
            continue
        r0, c0 = t.tile_row * t.rows, t.tile_col * t.cols
        cells[r0:r0 + t.rows, c0:c0 + t.cols] = t.positions.reshape(t.rows, t.cols)  # row-major tile grid
    if (cells < 0).any():
        raise UnsupportedModelError(f"{layout.architecture}: {int((cells < 0).sum())} cells of image {image}'s "
                                    f"{grid.rows}x{grid.cols} grid have no image token")
    return cells


def patch_words(lens: LensPass, tokenizer: Any, layout: ImageTokenLayout, layer: int,
                images: Sequence[int] | None = None) -> list[PatchWords]:
    """At `layer`, the top token of every image token, one (rows, cols) grid per image."""
    layer = lens.layer_index(layer)
    out = []
    for image in range(layout.n_images) if images is None else images:
        if not 0 <= image < layout.n_images:
            raise InputError(f"image {image} does not exist; the prompt has {layout.n_images}")
        cells = cell_positions(layout, image)
        flat = cells.reshape(-1)  # (rows * cols,)
        ids, probs = np.empty(len(flat), np.int64), np.empty(len(flat), np.float32)
        for start in range(0, len(flat), DECODE_CHUNK):
            chunk = lens.probs(layer, flat[start:start + DECODE_CHUNK]).max(dim=-1)
            ids[start:start + len(chunk.indices)] = chunk.indices.cpu().numpy()
            probs[start:start + len(chunk.values)] = chunk.values.cpu().numpy()
        rows, cols = cells.shape
        words = [[token_text(tokenizer, t).strip() for t in ids[r * cols:(r + 1) * cols]] for r in range(rows)]
        out.append(PatchWords(image, layer, layout.grid(image).box, ids.reshape(rows, cols),
                              probs.reshape(rows, cols), words))
    return out


def lens_payload(lens: LensPass, tokenizer: Any, layout: ImageTokenLayout | None, image: int = 0,
                 top_k: int = TOP_K) -> dict[str, Any]:
    """The `logit_lens` object of `attend --json --logit-lens`:

    {"layers": n + 1, "layer_names": ["embeddings", "layer 1", ...],
     "tokens": [per answer token {"index", "token", "id", "top": per layer [[text, prob] x top_k],
                "token_prob": per layer the answer token's probability}],
     "patch_words": {"image": 0, "grid": [rows, cols], "layers": per layer {"layer", "words", "probs"}}}

    Image tokens come before the answer, so their states (and the patch words) are the same
    for every answer token: one grid per layer. `patch_words` is null without a layout.
    """
    payload: dict[str, Any] = {
        "layers": lens.n_layers + 1,
        "layer_names": ["embeddings"] + [f"layer {i}" for i in range(1, lens.n_layers + 1)],
        "tokens": [t.to_json() for t in answer_lens(lens, tokenizer, top_k=top_k)],
        "patch_words": None,
    }
    if layout is not None and layout.n_images > image:
        grids = [patch_words(lens, tokenizer, layout, layer, images=[image])[0]
                 for layer in range(lens.n_layers + 1)]
        payload["patch_words"] = {"image": image, "grid": list(grids[0].shape),
                                  "layers": [g.to_json() for g in grids]}
    return payload


def attend_lens(engine: Engine, images: Sequence[Any], question: str, answer_ids: Sequence[int],
                adapter: Any = KEEP, top_k: int = TOP_K) -> tuple[LensPass, ImageTokenLayout | None, dict[str, Any]]:
    """The logit lens of a finished `attend` answer: (pass, layout or None, lens_payload).

    Rebuilds the one-question prompt `attend` asked, then reads prompt + `answer_ids` under
    the engine lock (`adapter` as for `engine.locked`: KEEP, the server default, as `attend` uses).
    """
    from vitdemo.attention.layouts import build_layout
    from vitdemo.chat.conversation import build_inputs, user_message
    from vitdemo.core.batch_inputs import to_model

    inputs = build_inputs(engine.processor, [user_message(question, len(images))], images)
    try:
        layout: ImageTokenLayout | None = build_layout(engine.model.config, engine.processor, inputs, images)
    except UnsupportedModelError as err:
        log.warning("logit lens without patch words: %s", err)
        layout = None
    tokenizer = getattr(engine.processor, "tokenizer", engine.processor)
    with engine.locked(adapter=adapter) as model:
        lens = run_lens(model, to_model(inputs, model), answer_ids)
        payload = lens_payload(lens, tokenizer, layout, top_k=top_k)
    return lens, layout, payload
