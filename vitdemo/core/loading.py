"""Load any image-text-to-text model + processor, with quantization, device and dtype choices.

One public function, `load_model`, used by the app, the CLI and the tests alike. Every
failure becomes a ModelLoadError whose message says what to do next.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitdemo.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Vision towers and projectors stay out of quantization (as LLaVA does with its
# projector): they are small, precision-sensitive, and a LoRA backward pass through a
# 4-bit layer with a bias fails on the CPU. Two spellings: transformers 5 matches
# patterns from the start of the module name, older versions match substrings.
_NOT_QUANTIZED = (
    "vision_tower",  # LLaVA family, PaliGemma, Gemma 3
    "multi_modal_projector",  # LLaVA family, PaliGemma, Mllama
    "vision_model",  # Idefics3 / SmolVLM, Mllama
    "connector",  # Idefics3 / SmolVLM
    "visual",  # Qwen2-VL, Qwen2.5-VL
    "image_newline",  # LLaVA-NeXT
)
SKIP_MODULES: list[str] = sorted({p for n in _NOT_QUANTIZED for p in (n, f"model.{n}")} | {"lm_head"})


@dataclass
class LoadedModel:
    """A model ready to generate, and what it was loaded from and how."""

    model: Any  # a transformers PreTrainedModel (image-text-to-text), in eval mode
    processor: Any  # the matching processor, with a chat template
    source: str  # Hub id or local folder it came from
    device: str  # "cuda" or "cpu": where inputs must go
    quantized: str  # "4bit", "8bit" or "none"
    dtype: str = "float32"  # compute dtype of the unquantized parts
    attn_implementation: str = "sdpa"  # the attention kernel it was loaded with
    load_seconds: float = 0.0  # wall time of load_model


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA GPU is visible to torch; use --device cpu")
    if device not in ("cuda", "cpu"):
        raise ModelLoadError(f"device {device!r} is not a device name vitdemo knows: use auto, cuda or cpu")
    return device


def resolve_quant(quant: str, device: str) -> str:
    """'auto' -> 4bit on CUDA, none on CPU (bitsandbytes on the CPU is slow)."""
    if quant == "auto":
        return "4bit" if device == "cuda" else "none"
    if quant not in ("4bit", "8bit", "none"):
        raise ModelLoadError(f"quant {quant!r} is not one of auto, 4bit, 8bit, none")
    return quant


def resolve_dtype(dtype: str, device: str):
    """'auto' -> bfloat16 on CUDA (float16 on GPUs without bf16), float32 on CPU."""
    import torch

    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in table:
        raise ModelLoadError(f"dtype {dtype!r} is not one of auto, {', '.join(table)}")
    return table[dtype]


def quantization_config(quant: str, compute_dtype):
    """BitsAndBytesConfig for 4bit (NF4, double quantization) or 8bit; None for 'none'."""
    if quant == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as err:
        raise ModelLoadError(
            f"--quant {quant} needs bitsandbytes ({err}); pip install bitsandbytes, or use --quant none"
        ) from None
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=SKIP_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_MODULES)


def _is_local(source: str) -> bool:
    return os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub? Checked once per load, so that with no
    network a load fails in seconds instead of after huggingface_hub's retries (~30 s)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _explain(source: str, err: BaseException) -> str:
    """Turn a transformers / hub exception into one actionable sentence."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    name = type(err).__name__
    if _is_local(source) and not os.path.isdir(os.path.expanduser(source)):
        return f"model folder {source!r} does not exist or is not a folder; pass a Hub id or a model folder"
    if "trust_remote_code" in low:
        return (
            f"{source!r} needs its own model code from the Hub; if you trust it, add --trust-remote-code"
        )
    if "unrecognized configuration class" in low or "image-text-to-text" in low and "not supported" in low:
        return (
            f"{source!r} is not a vision-language (image-text-to-text) model that "
            "AutoModelForImageTextToText can load; pick a model such as llava-hf/llava-1.5-7b-hf"
        )
    if name in ("RepositoryNotFoundError", "GatedRepoError") or "is not a valid model identifier" in low \
            or "repository not found" in low or "404" in low:
        return (
            f"no model named {source!r} on the Hugging Face Hub (check the spelling, or log in "
            "with `hf auth login` for a gated model) and no such local folder"
        )
    if _offline() or not _is_local(source) and not _hub_reachable(1.0) or "offline" in low or "connection" in low or "couldn't connect" in low \
            or "cannot find the requested files" in low or "localentrynotfound" in low:
        return (
            f"cannot get {source!r}: no network access (or HF_HUB_OFFLINE=1) and it is not in the "
            "local cache; download it where there is network (`hf download "
            f"{source}`) or pass a local folder"
        )
    if isinstance(err, MemoryError) or "out of memory" in low:
        return f"out of memory loading {source!r}; try --quant 4bit, a smaller model, or another device"
    if "config.json" in low or "does not appear to have a file" in low:
        return f"{source!r} has no usable config.json/weights for transformers ({err})"
    return f"could not load {source!r}: {text.splitlines()[0][:300]}"


def _check_vision_language(source: str, config: Any) -> None:
    """Refuse text-only (or other) models before spending time on their weights."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return
    if getattr(config, "auto_map", None) and "AutoModelForImageTextToText" in config.auto_map:
        return
    raise ModelLoadError(
        f"{source!r} is a {model_type!r} model, not a vision-language (image-text-to-text) model; "
        "pick one such as llava-hf/llava-1.5-7b-hf, HuggingFaceTB/SmolVLM-256M-Instruct or Qwen/Qwen2-VL-2B-Instruct"
    )


def load_model(
    source: str | os.PathLike,
    *,
    quant: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load `source` (Hub id or folder) with AutoModelForImageTextToText + AutoProcessor.

    quant: auto (4bit NF4 + double quantization on CUDA, none on CPU) | 4bit | 8bit | none.
    attn_implementation: None/"sdpa" (default, fast) or "eager" (attention weights).
    Raises ModelLoadError with an actionable message on any failure.
    """
    started = time.perf_counter()
    source = str(source)
    if _is_local(source):
        source = os.path.expanduser(source)
    dev = resolve_device(device)
    q = resolve_quant(quant, dev)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = attn_implementation or "sdpa"
    if attn not in ("sdpa", "eager"):
        raise ModelLoadError(f"attn_implementation {attn!r} is not one of sdpa, eager")

    try:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    except ImportError as err:  # a broken install, not the user's model
        raise ModelLoadError(f"transformers is not importable ({err}); pip install -r requirements.txt") from None

    # No network: use only the local cache, and say so at once if the model is not in it.
    local_only = not _is_local(source) and not _offline() and not _hub_reachable()
    if local_only:
        logger.info("the Hugging Face Hub is not reachable: looking for %s in the local cache only", source)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local_only
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one actionable message
        raise ModelLoadError(_explain(source, err)) from err
    _check_vision_language(source, config)

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": attn,
        "local_files_only": local_only,
    }
    qconf = quantization_config(q, torch_dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    if dev == "cuda" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # data-parallel fine-tuning (accelerate launch): each process holds the whole model on its
        # own GPU; accelerate refuses a model spread with device_map="auto" in that mode
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0") or 0)}
    elif dev == "cuda":
        kwargs["device_map"] = "auto"  # accelerate: one GPU, or spread over several
    elif qconf is not None:
        kwargs["device_map"] = {"": "cpu"}
    try:
        try:
            model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        except ValueError as err:
            if attn != "sdpa" or "sdpa" not in str(err).lower():
                raise
            logger.warning("%s does not support SDPA attention; falling back to eager", source)
            kwargs["attn_implementation"] = attn = "eager"
            model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local_only
        )
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(_explain(source, err)) from err

    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not hasattr(processor, "image_processor"):
        raise ModelLoadError(
            f"{source!r} loaded a {type(processor).__name__}, not a processor with a tokenizer and an "
            "image processor; it cannot take images and text"
        )
    if not getattr(processor, "chat_template", None) and not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"{source!r} has no chat template in its processor or tokenizer; vitdemo builds prompts "
            "with it. Use the instruction-tuned variant of the model (e.g. a *-hf or *-Instruct repo)"
        )
    if dev == "cpu" and qconf is None:
        model.to("cpu")
    model.eval()
    seconds = time.perf_counter() - started
    logger.info("loaded %s on %s (quant=%s, dtype=%s, attn=%s) in %.1fs", source, dev, q,
                str(torch_dtype).removeprefix("torch."), attn, seconds)
    return LoadedModel(
        model=model,
        processor=processor,
        source=source,
        device=dev,
        quantized=q,
        dtype=str(torch_dtype).removeprefix("torch."),
        attn_implementation=attn,
        load_seconds=seconds,
    )


def resolve_model_source(model: str | None, home: str | os.PathLike) -> str:
    """The model to load: the one asked for; else the shipped classroom model; else the
    built-in fallback LLaVA (random weights), built once into `home/models/`."""
    if model:
        return model
    from vitdemo.paths import CLASSROOM_MODEL_DIR

    if (CLASSROOM_MODEL_DIR / "config.json").is_file():
        return str(CLASSROOM_MODEL_DIR)
    from vitdemo.core.fallback import ensure_fallback_model

    folder: Path = ensure_fallback_model(home)
    logger.warning(
        "no classroom model in %s: using the built-in fallback model %s (random weights)",
        CLASSROOM_MODEL_DIR, folder,
    )
    return str(folder)
