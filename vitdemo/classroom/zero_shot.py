"""Zero-shot image-caption matching with the classroom model's contrastive encoders (the
CLIP pair its recipe trains first): the held-out evaluation and the Learn tab use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass
class CaptionMatch:
    captions: list[str]
    cosine: np.ndarray  # (images, captions) cosine similarity of the two embeddings
    temperature: float  # tau of the CLIP objective: logits = cosine / tau
    probs: np.ndarray  # (images, captions) softmax over captions of cosine / tau
    picked: list[int]  # per image, the index of the caption it matches best


@torch.inference_mode()
def match_captions(clip: Any, processor: Any, images: list[Image.Image], captions: list[str]) -> CaptionMatch:
    """How well each image matches each caption; captions are cut to 90 tokens."""
    if not images or not captions:
        raise ValueError(f"need at least one image and one caption, got {len(images)} and {len(captions)}")
    tok = processor.tokenizer
    ids = [tok(c, add_special_tokens=False)["input_ids"][:90] + [tok.eos_token_id] for c in captions]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)  # (C, T)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (I, 3, H, W)
    text = clip.get_text_features(input_ids=input_ids.to(clip.device), attention_mask=mask.to(clip.device))
    vision = clip.get_image_features(pixel_values=pixels.to(clip.device))
    text = getattr(text, "pooler_output", text)
    vision = getattr(vision, "pooler_output", vision)
    cosine = torch.nn.functional.normalize(vision, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T  # (I, C)
    scale = float(clip.logit_scale.exp())
    probs = (cosine * scale).softmax(-1)
    return CaptionMatch(captions=list(captions), cosine=cosine.cpu().numpy(), temperature=1.0 / scale,
                        probs=probs.cpu().numpy(), picked=probs.argmax(-1).tolist())
