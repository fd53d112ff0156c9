"""Tiny seeded random vision-language models built in code, for tests (no network).

Each builder saves model and processor with save_pretrained into `dir` and returns `dir`
as a Path; `AutoModelForImageTextToText` / `AutoProcessor` load them back, the same way
the app loads a Hub model. All three stay well under 2 MB.

- build_tiny_llava: LlavaForConditionalGeneration, CLIP tower, strategy "default"
  (the app's own fallback builder, reused so there is one copy of it).
- build_tiny_idefics3: Idefics3ForConditionalGeneration with a SmolVLM-style processor
  (images split into tiles plus a global image).
- build_tiny_qwen2vl: Qwen2VLForConditionalGeneration (dynamic resolution, merged patches).
"""

from __future__ import annotations

import os
from pathlib import Path

from vitdemo.core.fallback import (
    TinyLlavaSpec,
    _set_generation_tokens,
    build_tiny_llava,
    train_tokenizer,
)

__all__ = ["build_tiny_llava", "build_tiny_idefics3", "build_tiny_qwen2vl", "TinyLlavaSpec"]

# SmolVLM-style template: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:"
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Qwen2-VL's own template shape: each image is <|vision_start|><|image_pad|><|vision_end|>.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_tiny_idefics3(dir: str | os.PathLike, seed: int = 0) -> Path:
    """Idefics3 (SmolVLM) with 32 px tiles of 8 px patches, pixel-shuffle scale 2.

    Tokens per tile: (32/8)^2 / 2^2 = 4. An image up to 64 px is split into up to 2x2
    tiles plus one global image, each framed by <fake_token_around_image> and a
    <row_i_col_j> / <global-img> tag, which the tokenizer must know.
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    tile, patch, scale = 32, 8, 2
    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>"]
    specials += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = train_tokenizer(
        specials, bos="<|im_start|>", eos="<end_of_utterance>", chat_template=IDEFICS3_CHAT_TEMPLATE
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * tile},  # resize so the longest edge is 2 tiles
        max_image_size={"longest_edge": tile},  # tile side
        do_image_splitting=True,
    )
    image_seq_len = (tile // patch) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    vision = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=tile,
        patch_size=patch,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    _set_generation_tokens(model, tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2vl(dir: str | os.PathLike, seed: int = 0) -> Path:
    """Qwen2-VL with 8 px patches merged 2x2: a 32x32 image is 4x4 patches -> 4 tokens.

    Qwen2VLProcessor needs a video processor (which needs torchvision) even for images.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    patch, merge = 8, 2
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = train_tokenizer(
        specials, bos="<|im_start|>", eos="<|im_end|>", image_token=None, chat_template=QWEN2VL_CHAT_TEMPLATE
    )
    unit = patch * merge  # image sides are rounded to multiples of this
    pixels = {"min_pixels": unit * unit, "max_pixels": 4 * unit * unit}  # 1 to 4 merged tokens... x4 patches
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch, merge_size=merge, temporal_patch_size=2, size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=patch, merge_size=merge, temporal_patch_size=2, size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    hidden, heads = 64, 4
    head_dim = hidden // heads  # 16 -> rotary half 8 = temporal 2 + height 3 + width 3
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,  # the merger projects to the text width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    assert sum(config.text_config.rope_parameters["mrope_section"]) * 2 == head_dim, "mrope_section must cover head_dim/2"
    model = Qwen2VLForConditionalGeneration(config).eval()
    _set_generation_tokens(model, tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
