"""Model loading, the engine and streamed chat, on the three tiny architectures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from vitdemo.paths import REPO_ROOT

import pytest
import torch
from PIL import Image

from vitdemo.chat import conversation
from vitdemo.core.engine import KEEP, Engine
from vitdemo.core.images import open_image
from vitdemo.errors import BusyError, GenerationError, ImageError, InputError, ModelLoadError
from vitdemo.core.loading import load_model

from adapters import save_lora

ARCHS = {
    "tiny_llava_dir": "LlavaForConditionalGeneration",
    "tiny_idefics3_dir": "Idefics3ForConditionalGeneration",
    "tiny_qwen2vl_dir": "Qwen2VLForConditionalGeneration",
}
GREEDY = conversation.GenerationSettings(max_new_tokens=8)


def _img(color: str = "red", size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture(scope="module")
def llava_engine(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.mark.parametrize("fixture", list(ARCHS))
def test_each_architecture_loads_and_answers_multi_turn(fixture: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(fixture)
    loaded = load_model(folder)
    assert type(loaded.model).__name__ == ARCHS[fixture]
    assert (loaded.device, loaded.quantized, loaded.attn_implementation) == ("cpu", "none", "sdpa")
    engine = Engine(loaded)
    conv = [conversation.user_message("What is red?", 1)]
    stats = conversation.AnswerStats()
    pieces = list(conversation.stream_answer(engine, conv, [_img()], GREEDY, stats=stats))
    first = "".join(pieces).strip()
    assert first, f"{fixture}: empty answer"
    assert stats.input_tokens > 0 and 1 <= stats.new_tokens <= 8
    assert stats.first_token_s is not None and stats.first_token_s <= stats.total_s
    # Greedy is repeatable.
    assert conversation.answer(engine, conv, [_img()], GREEDY) == first
    # A second turn with a second image: the history is part of the prompt.
    conv2 = conv + [conversation.assistant_message(first), conversation.user_message("And this one?", 1)]
    second = conversation.answer(engine, conv2, [_img(), _img("blue", (30, 60))], GREEDY)
    assert second
    assert not engine.lock.locked()


def test_text_only_follow_up_without_new_image(llava_engine: Engine) -> None:
    conv = [conversation.user_message("What is red?", 1), conversation.assistant_message("a circle"),
            conversation.user_message("Why?", 0)]
    assert conversation.answer(llava_engine, conv, [_img()], GREEDY)


def test_sampling_is_seeded(llava_engine: Engine) -> None:
    conv = [conversation.user_message("Describe it.", 1)]
    hot = conversation.GenerationSettings(max_new_tokens=8, temperature=1.5, top_p=0.95, seed=7)
    a = conversation.answer(llava_engine, conv, [_img()], hot)
    b = conversation.answer(llava_engine, conv, [_img()], hot)
    assert a == b


def test_stop_event_ends_generation_early(llava_engine: Engine) -> None:
    stop = threading.Event()
    stats = conversation.AnswerStats()
    gen = conversation.GenerationSettings(max_new_tokens=200)
    # The fallback model suppresses EOS-less endings rarely; min length keeps it generating.
    llava_engine.model.generation_config.min_new_tokens = 200
    try:
        for _ in conversation.stream_answer(llava_engine, [conversation.user_message("Go", 1)], [_img()], gen,
                                    stop_event=stop, stats=stats):
            stop.set()
    finally:
        llava_engine.model.generation_config.min_new_tokens = None
    assert stats.stopped
    assert stats.new_tokens < 200, f"stop did not stop: {stats.new_tokens} tokens"
    assert not llava_engine.lock.locked()


def test_closing_the_stream_releases_the_lock(llava_engine: Engine) -> None:
    stream = conversation.stream_answer(llava_engine, [conversation.user_message("Go", 1)], [_img()],
                                conversation.GenerationSettings(max_new_tokens=64))
    next(stream)
    assert llava_engine.lock.locked()
    stream.close()
    assert not llava_engine.lock.locked()


def test_lock_serialises_concurrent_users(llava_engine: Engine) -> None:
    active = []
    overlaps = []
    original = llava_engine.model.generate

    def watched(*args, **kwargs):
        active.append(1)
        if len(active) > 1:
            overlaps.append(len(active))
        time.sleep(0.05)
        try:
            return original(*args, **kwargs)
        finally:
            active.pop()

    llava_engine.model.generate = watched
    answers: list[str] = []
    errors: list[BaseException] = []

    def user(i: int) -> None:
        try:
            answers.append(conversation.answer(llava_engine, [conversation.user_message(f"Q{i}", 1)], [_img()], GREEDY))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        del llava_engine.model.generate
    assert not errors, errors
    assert len(answers) == 4 and all(answers)
    assert not overlaps, f"generations overlapped: {overlaps}"


def test_busy_engine_raises_busy_error(tiny_llava_dir: Path) -> None:
    engine = Engine(load_model(tiny_llava_dir), lock_timeout_s=0.2)
    engine.lock.acquire()
    try:
        with pytest.raises(BusyError, match="busy"):
            conversation.answer(engine, [conversation.user_message("Hi", 1)], [_img()], GREEDY)
    finally:
        engine.lock.release()


def test_out_of_memory_is_a_clear_error_and_the_next_request_works(llava_engine: Engine,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(llava_engine.model, "generate", oom)
    with pytest.raises(GenerationError, match=r"out of memory while generating \(\d+ input tokens"):
        conversation.answer(llava_engine, [conversation.user_message("Hi", 1)], [_img()], GREEDY)
    monkeypatch.undo()
    assert not llava_engine.lock.locked()
    assert conversation.answer(llava_engine, [conversation.user_message("Hi", 1)], [_img()], GREEDY)


@pytest.mark.parametrize("conv,n_images,match", [
    ([], 0, "empty"),
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "   "}]}], 1, "empty"),
    ([conversation.user_message("Hi", 1)], 0, "1 image placeholders but 0 images"),
    ([conversation.assistant_message("Hi")], 0, "must be from the user"),
])
def test_bad_conversations_are_input_errors(llava_engine: Engine, conv, n_images: int, match: str) -> None:
    with pytest.raises(InputError, match=match):
        conversation.answer(llava_engine, conv, [_img()] * n_images, GREEDY)
    assert not llava_engine.lock.locked()


@pytest.mark.parametrize("bad", [
    dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5),
])
def test_bad_generation_settings(bad: dict) -> None:
    with pytest.raises(InputError):
        conversation.GenerationSettings(**bad).validate()


def test_context_overflow_is_an_input_error(llava_engine: Engine) -> None:
    long_text = "red " * 600  # the tiny model's context is 512 positions
    with pytest.raises(InputError, match="context is 512"):
        conversation.answer(llava_engine, [conversation.user_message(long_text, 1)], [_img()], GREEDY)


def test_open_image_rejects_non_images(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a png")
    with pytest.raises(ImageError, match="notes.png"):
        open_image(str(bad))
    good = tmp_path / "rgba.png"
    Image.new("RGBA", (10, 12), (255, 0, 0, 128)).save(good)
    img = open_image(str(good))
    assert img.mode == "RGB" and img.size == (10, 12)


def test_load_errors_are_fast_and_actionable(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no network|HF_HUB_OFFLINE"):
        load_model("llava-hf/this-model-does-not-exist-123")
    assert time.perf_counter() - started < 10


def test_text_only_model_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="not a vision-language"):
        load_model(folder)


def test_bad_options_are_refused(tiny_llava_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="quant"):
        load_model(tiny_llava_dir, quant="3bit")
    with pytest.raises(ModelLoadError, match="attn_implementation"):
        load_model(tiny_llava_dir, attn_implementation="flash")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_model(tiny_llava_dir, device="cuda")


def test_eager_attention_on_request(tiny_llava_dir: Path) -> None:
    loaded = load_model(tiny_llava_dir, attn_implementation="eager")
    assert loaded.attn_implementation == "eager"
    assert loaded.model.config._attn_implementation == "eager"


def test_four_bit_nf4_on_cpu_keeps_vision_tower_unquantized(tiny_llava_dir: Path) -> None:
    """As far as bitsandbytes allows on the CPU: NF4 + double quant load, then generate."""
    import bitsandbytes as bnb

    loaded = load_model(tiny_llava_dir, quant="4bit", device="cpu")
    assert loaded.quantized == "4bit"
    qconf = loaded.model.config.quantization_config
    qconf = qconf if isinstance(qconf, dict) else qconf.to_dict()
    assert qconf["bnb_4bit_quant_type"] == "nf4" and qconf["bnb_4bit_use_double_quant"] is True
    kinds: dict[str, set[str]] = {}
    for name, module in loaded.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            part = "vision" if ("vision_tower" in name or "multi_modal_projector" in name) else \
                "lm_head" if name.endswith("lm_head") else "language"
            kinds.setdefault(part, set()).add(type(module).__name__)
    assert kinds["language"] == {bnb.nn.Linear4bit.__name__}, kinds
    assert kinds["vision"] == {"Linear"}, kinds
    assert kinds["lm_head"] == {"Linear"}, kinds
    assert conversation.answer(Engine(loaded), [conversation.user_message("What is red?", 1)], [_img()], GREEDY)


def test_adapter_switching(tiny_llava_dir: Path, tmp_path: Path) -> None:
    engine = Engine(load_model(tiny_llava_dir))
    conv = [conversation.user_message("What is red?", 1)]
    gen = conversation.GenerationSettings(max_new_tokens=12)

    def logits() -> torch.Tensor:
        inputs = conversation.build_inputs(engine.processor, conv, [_img()])
        with engine.locked(), torch.no_grad():
            return engine.model(**inputs).logits[0, -1]

    base = logits()
    a1 = save_lora(tiny_llava_dir, tmp_path / "a1", seed=1)
    a2 = save_lora(tiny_llava_dir, tmp_path / "a2", seed=2)
    engine.use_adapter(a1)
    assert engine.active_adapter == str(a1.resolve())
    with_a1 = logits()
    assert not torch.allclose(base, with_a1, atol=1e-4), "adapter a1 did not change the output"
    engine.use_adapter(a2)
    with_a2 = logits()
    assert not torch.allclose(with_a1, with_a2, atol=1e-4)
    engine.use_adapter(None)
    assert engine.active_adapter is None
    assert torch.allclose(base, logits(), atol=1e-5), "base model output changed after adapters"
    # Per-request adapter: stream_answer switches under the lock.
    assert conversation.answer(engine, conv, [_img()], gen, adapter=a1)
    assert engine.active_adapter == str(a1.resolve())
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        engine.use_adapter(tmp_path)


def test_per_user_adapter_does_not_change_what_others_get(tiny_llava_dir: Path, tmp_path: Path) -> None:
    """One user's adapter choice (passed per request) leaves the server default as it is."""
    from vitdemo.chat.session import ChatSession

    engine = Engine(load_model(tiny_llava_dir))
    gen = conversation.GenerationSettings(max_new_tokens=12)
    adapter = save_lora(tiny_llava_dir, tmp_path / "a1", seed=1)
    image = tmp_path / "red.png"
    _img().save(image)

    def reply(adapter_arg) -> str:
        session = ChatSession()
        session.add_user_message("What is red?", [str(image)])
        return list(session.stream_reply(engine, gen, adapter=adapter_arg))[-1]

    base_answer = reply(KEEP)
    tuned_answer = reply(str(adapter))
    assert tuned_answer != base_answer
    assert engine.active_adapter == str(adapter.resolve())  # the tuned user's request left it switched on...
    assert reply(KEEP) == base_answer  # ...yet the next user without a choice gets the server default
    engine.use_adapter(adapter)  # the server default itself (--adapter)
    assert reply(KEEP) == tuned_answer and reply(None) == base_answer


def test_streamer_hands_on_each_token_at_once_and_never_splits_a_character() -> None:
    """The first word is not held back until a space; multi-byte characters arrive whole."""
    from transformers import AutoTokenizer

    from vitdemo.chat.conversation import _Detokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "assets" / "classroom")
    text = "three 红色 and a blue circle"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = _Detokenizer(tokenizer)
    assert detok.add([ids[0]]) == tokenizer.decode(ids[:1])  # out after one token
    pieces = [tokenizer.decode(ids[:1])] + [detok.add([token]) for token in ids[1:]]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert len(tokenizer("红", add_special_tokens=False)["input_ids"]) > 1  # the case this guards: 红 is bytes
