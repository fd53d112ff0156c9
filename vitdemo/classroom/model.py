"""The classroom model's parts: tokenizer, processor, LLaVA model and contrastive CLIP pair.

Everything is a real Hugging Face class, saved with save_pretrained, so the app loads the
classroom model through exactly the same AutoModelForImageTextToText path as a Hub model.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from vitdemo.classroom import scenes

IMAGE_TOKEN = "<image>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = [PAD_TOKEN, END_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, IMAGE_TOKEN]

# One turn is `<|user|>` + images + text + `<|end|>`, the answer `<|assistant|>` + text +
# `<|end|>`: no whitespace between pieces, so a conversation tokenizes as the concatenation
# of its pieces (training builds ids piecewise and must match this template exactly).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>' }}{% else %}{{ '<|assistant|>' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class ClassroomArchitecture:
    """Sizes of the classroom model (the FINDINGS calibration: small learns binding sooner)."""

    image_size: int = 96  # pixels per side after the processor's resize
    patch_size: int = 12  # 96 / 12 = an 8x8 grid of image tokens; 12 px patches see shape edges
    vision_hidden: int = 96  # CLIP tower width
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128  # Llama decoder width
    text_layers: int = 3
    text_heads: int = 4
    text_encoder_hidden: int = 96  # contrastive text encoder (CLIP text tower) width
    text_encoder_layers: int = 2
    contrastive_dim: int = 64  # shared embedding size of the CLIP objective
    vocab_size: int = 640  # byte-level BPE: 256 bytes + merges + special tokens
    max_positions: int = 512  # decoder context: 64 image tokens + a few turns


def _tokenizer_corpus() -> list[str]:
    """Scene language (every template filled) plus a few other scripts, for the BPE merges."""
    import numpy as np

    rng = np.random.default_rng(1234)
    lines: list[str] = []
    for _ in range(3000):
        scene = scenes.generate_scene(rng, size=24, style=scenes.SceneStyle(supersample=1, noise_sigma=0))
        for qa in scenes.questions_for(scene, rng, canonical=False):
            lines += [qa.question, qa.answer]
    # Words a fine-tune is likely to add (other languages' colour names, yes/no, numbers).
    lines += ["红色 绿色 蓝色 黄色 紫色 橙色 圆形 正方形 三角形 是 否 一 二 三 四",
              "rouge vert bleu jaune violet orange cercle carré triangle oui non",
              "rot grün blau gelb lila orange Kreis Quadrat Dreieck ja nein",
              "Answer in Chinese. Answer in French. Answer in German. Answer with one word.",
              "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - the a an is are of in on at"]
    return lines


def build_tokenizer(arch: ClassroomArchitecture = ClassroomArchitecture()) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on scene text: any text (Chinese included) still tokenizes."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=arch.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token=PAD_TOKEN,
        eos_token=END_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
        model_max_length=arch.max_positions,
    )
    tokenizer.padding_side = "left"  # generation pads on the left
    return tokenizer


def build_processor(arch: ClassroomArchitecture = ClassroomArchitecture()) -> LlavaProcessor:
    tokenizer = build_tokenizer(arch)
    # Squash to a square (no centre crop) so every part of any upload stays visible and
    # positions keep their meaning.
    image_processor = CLIPImageProcessor(
        size={"height": arch.image_size, "width": arch.image_size},
        do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=arch.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS feature, dropped by strategy "default"
        chat_template=CHAT_TEMPLATE,
    )


def vision_config(arch: ClassroomArchitecture) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=4 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        projection_dim=arch.contrastive_dim,
    )


def build_llava(processor: LlavaProcessor, arch: ClassroomArchitecture = ClassroomArchitecture(),
                seed: int = 0) -> LlavaForConditionalGeneration:
    import torch

    tok = processor.tokenizer
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=arch.max_positions,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision_config(arch),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # only 3 encoder layers: the projector reads the last
        projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    # Every answer of this world is short: a cap keeps an off-world picture from babbling.
    model.generation_config.max_new_tokens = answer_token_cap(tok)
    return model


def answer_token_cap(tokenizer) -> int:
    """New tokens the longest answer needs: a description of four objects whose parts are
    the longest to tokenize, its end token, and as much again for a fine-tune's longer answers.
    The app never asks a model for more new tokens than its generation config's max_new_tokens."""
    parts = sorted((f"a {color} {shape} at {position}" for color in scenes.COLORS for shape in scenes.SHAPES
                    for position in scenes.POSITIONS), key=lambda text: len(tokenizer(text)["input_ids"]))[-4:]
    longest = ", ".join(parts[:-1]) + " and " + parts[-1]
    return 2 * len(tokenizer(longest, add_special_tokens=False)["input_ids"]) + 1


def build_clip(processor: LlavaProcessor, arch: ClassroomArchitecture = ClassroomArchitecture(),
               seed: int = 0) -> CLIPModel:
    """Vision encoder + small text encoder for contrastive pretraining (stage 1)."""
    import torch

    tok = processor.tokenizer
    text = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=arch.text_encoder_hidden,
        intermediate_size=4 * arch.text_encoder_hidden,
        num_hidden_layers=arch.text_encoder_layers,
        num_attention_heads=4,
        max_position_embeddings=96,
        projection_dim=arch.contrastive_dim,
        pad_token_id=tok.pad_token_id,
        # The text embedding is read at the first END token (CLIP's EOS pooling).
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.pad_token_id,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision_config(arch).to_dict(),
                        projection_dim=arch.contrastive_dim)
    torch.manual_seed(seed)
    return CLIPModel(config)
