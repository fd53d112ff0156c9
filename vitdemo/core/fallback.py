"""A small random LLaVA built in code: the model used when the classroom model's files are missing.

It has the real architecture (CLIP vision tower, projector, Llama language model, a
tokenizer with a chat template) and goes through exactly the same `from_pretrained` path
as a Hub model, but its weights are random: its answers are fluent-looking nonsense.
The tests build the same model (and two other architectures) from these helpers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Words the byte-level BPE tokenizer is trained on, so random answers read as words.
_CORPUS_WORDS = (
    "the a an is are of in on to and what where how many which colour color shape "
    "red green blue yellow purple orange black white circle square triangle object "
    "objects image picture there one two three four zero top bottom left right center "
    "middle corner yes no this that it I see can you describe please answer question "
    "model vision language token attention layer head patch tile learn train data "
    "small large big little near far above below next beside between with without"
).split()

# A chat template that renders `{"type": "image"}` entries as the image token; the
# processor then expands each one to the right number of image tokens.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'system' %}SYSTEM: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the fallback LLaVA; the defaults keep it well under 2 MB on disk."""

    image_size: int = 32  # square input side in pixels
    patch_size: int = 8  # (32 / 8)^2 = 16 patches, + CLS dropped by strategy "default"
    vision_hidden: int = 32  # CLIP tower width
    vision_layers: int = 2  # CLIP tower depth
    vision_heads: int = 2
    text_hidden: int = 64  # Llama width
    text_layers: int = 2  # Llama depth
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention, as in recent Llamas
    vocab_size: int = 512  # BPE merges on top of the 256 bytes; specials come on top


def _seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def train_tokenizer(
    special_tokens: list[str],
    *,
    bos: str = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str = "<unk>",
    image_token: str | None = "<image>",
    vocab_size: int = 512,
    chat_template: str | None = None,
):
    """Train a byte-level BPE tokenizer in code (no download) and wrap it for transformers.

    Byte-level means every input text can be encoded, whatever the user types.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base_specials = [pad, bos, eos, unk]
    extra = [t for t in special_tokens if t not in base_specials]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=base_specials + extra,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_CORPUS_WORDS[i:] + _CORPUS_WORDS[:i]) for i in range(len(_CORPUS_WORDS))]
    corpus += ["USER: ASSISTANT: SYSTEM: " + w.capitalize() + "? " + w + "." for w in _CORPUS_WORDS]
    tok.train_from_iterator(corpus, trainer=trainer)
    kwargs = {}
    if image_token is not None:
        kwargs["extra_special_tokens"] = {"image_token": image_token}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=extra,
        **kwargs,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_llava(out_dir: str | os.PathLike, seed: int = 0, spec: TinyLlavaSpec = TinyLlavaSpec()) -> Path:
    """Build a seeded random LLaVA (CLIP tower, strategy "default") and save it to `out_dir`.

    Saves model, tokenizer, image processor and chat template with save_pretrained, so
    `AutoModelForImageTextToText` and `AutoProcessor` load it back.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    tokenizer = train_tokenizer(["<image>"], vocab_size=spec.vocab_size, chat_template=LLAVA_CHAT_TEMPLATE)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    # Strategy "default" drops the CLS feature; num_additional_image_tokens=1 tells the
    # processor that the tower emits one extra (CLS) token, so it writes 16 <image> tokens.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    _set_generation_tokens(model, tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("built tiny LLaVA (seed %d) in %s", seed, out)
    return out


def _set_generation_tokens(model, tokenizer) -> None:
    """Make generate() stop at EOS, pad with PAD, and never emit unreadable tokens.

    A random model picks tokens uniformly-ish; suppressing single non-ASCII bytes and
    special tokens (except EOS) keeps its nonsense readable in the chat window.
    """
    gc = model.generation_config
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.suppress_tokens = unreadable_token_ids(tokenizer)


def unreadable_token_ids(tokenizer) -> list[int]:
    """Ids of tokens that decode to non-printable text, plus every special token but EOS."""
    bad = []
    specials = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    for idx in range(len(tokenizer)):
        text = tokenizer.decode([idx])
        if idx in specials or not text.strip() or not all(32 <= ord(c) < 127 for c in text):
            bad.append(idx)
    return bad


FALLBACK_DIRNAME = "fallback-llava"


def ensure_fallback_model(home: str | os.PathLike, seed: int = 0) -> Path:
    """Return the folder of the built-in fallback model under `home/models`, building it once.

    Built in a temporary folder and renamed into place, so an interrupted build never
    leaves a half-written model that would then fail to load.
    """
    target = Path(home) / "models" / FALLBACK_DIRNAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build_tiny_llava(tmp, seed=seed)
        if target.exists():  # a concurrent process won the race, or a broken leftover
            if (target / "config.json").is_file():
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built the fallback model in %s (random weights: answers are nonsense)", target)
    return target
