"""The batching scheduler: batched answers equal solo answers, rows end on their own,
per-row sampling and adapters, faults that hit one row, fair turns with capture, and
requests still being prepared joining the batch that starts."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch
from PIL import Image

from vitdemo.chat import conversation as C
from vitdemo.core.engine import KEEP, Engine
from vitdemo.core.fair_lock import FairLock
from vitdemo.core.loading import load_model
from vitdemo.core.scheduler import Row
from vitdemo.errors import GenerationError, ImageError, InputError
from vitdemo.paths import REPO_ROOT

CLASSROOM = REPO_ROOT / "assets" / "classroom"


def _img(color: str, size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, color)


def _requests() -> list[tuple[list[dict], list[Image.Image]]]:
    """Different prompt lengths, image counts and sizes, and a multi-turn history."""
    return [
        ([C.user_message("What is red?", 1)], [_img("red", (48, 40))]),
        ([C.user_message("Describe the picture in many words please, all of it", 2)],
         [_img("blue", (30, 60)), _img("green", (96, 96))]),
        ([C.user_message("Hi", 1), C.assistant_message("a circle"), C.user_message("And this one?", 1)],
         [_img("red", (40, 40)), _img("yellow", (100, 50))]),
        ([C.user_message("How many shapes are there?", 1), C.assistant_message("two"),
          C.user_message("Which colour is the left one?", 0)], [_img("purple", (64, 64))]),
    ]


def _rows(engine: Engine, requests: Sequence[tuple[list[dict], list]], **settings: Any) -> list[Row]:
    return [Row(C.build_inputs(engine.processor, conv, images), **{"max_new_tokens": 12, **settings})
            for conv, images in requests]


def _tokens(row: Row) -> list[int]:
    out = [t for ids in row.tokens() for t in ids]
    row.wait_released()
    return out


def _alone(engine: Engine, rows: Sequence[Row]) -> list[list[int]]:
    answers = []
    for row in rows:
        engine.scheduler.submit(row)
        answers.append(_tokens(row))
        assert engine.scheduler.last_batch_size == 1
    return answers


def _together(engine: Engine, rows: Sequence[Row]) -> list[list[int]]:
    """Submit all rows while the model is busy, so the scheduler takes them as one batch."""
    with engine.lock:
        for row in rows:
            engine.scheduler.submit(row)
        deadline = time.monotonic() + 10
        while engine.lock.waiting() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the dispatcher queues for the lock
    answers = [_tokens(row) for row in rows]
    assert engine.scheduler.last_batch_size == len(rows), "the rows did not share one batch"
    return answers


@pytest.fixture(scope="module")
def llava(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.mark.parametrize("fixture", ["tiny_llava_dir", "tiny_idefics3_dir", "tiny_qwen2vl_dir", "classroom"])
def test_batched_greedy_answers_equal_solo_answers(fixture: str, request: pytest.FixtureRequest) -> None:
    folder = CLASSROOM if fixture == "classroom" else request.getfixturevalue(fixture)
    engine = Engine(load_model(folder))
    requests = _requests()
    solo = _alone(engine, _rows(engine, requests))
    batched = _together(engine, _rows(engine, requests))
    assert batched == solo, f"{fixture}: batched answers differ from solo ones"
    assert len({len(r) for r in solo}) > 1 or len({tuple(r) for r in solo}) > 1  # not all one answer
    assert not engine.lock.locked() and engine.scheduler.pending() == 0


def test_per_row_settings_seeded_sampling_and_lengths(llava: Engine) -> None:
    requests = _requests()
    settings = [dict(max_new_tokens=5), dict(max_new_tokens=12, temperature=1.3, top_p=0.9, seed=7),
                dict(max_new_tokens=9, temperature=0.8, seed=3), dict(max_new_tokens=12, repetition_penalty=1.5)]

    def rows() -> list[Row]:
        return [Row(C.build_inputs(llava.processor, conv, ims), **s) for (conv, ims), s in zip(requests, settings)]

    solo = _alone(llava, rows())
    batched = _together(llava, rows())
    assert batched == solo
    llava.model.generation_config.min_new_tokens = 12  # no early end of sequence: lengths are the limits
    try:
        lengths = [len(t) for t in _together(llava, rows())]
    finally:
        llava.model.generation_config.min_new_tokens = None
    assert lengths == [5, 12, 9, 12]
    # Another seed draws another answer.
    other = Row(C.build_inputs(llava.processor, *requests[1]), max_new_tokens=12, temperature=1.3, top_p=0.9, seed=8)
    assert _alone(llava, [other])[0] != solo[1]


def _lora(base_dir: Path, out: Path, seed: int, targets: Any) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(out)
    return out


class _GenerateCounter:
    def __init__(self, model: Any) -> None:
        self.model, self.calls, self.inner = model, [], model.generate

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(int(kwargs["input_ids"].shape[0]))
        return self.inner(*args, **kwargs)


def test_users_with_different_adapters_share_a_batch(tiny_llava_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lm_only = r".*language_model.*\.(q_proj|v_proj)"  # LoRA on the language model alone: mixable rows
    a1 = _lora(tiny_llava_dir, tmp_path / "a1", 1, lm_only)
    a2 = _lora(tiny_llava_dir, tmp_path / "a2", 2, lm_only)
    vision = _lora(tiny_llava_dir, tmp_path / "v", 3, ["q_proj", "v_proj"])  # also in the vision tower
    engine = Engine(load_model(tiny_llava_dir))
    engine.use_adapter(a2)  # the server default: what KEEP means
    request = _requests()[0]
    choices = [None, a1, KEEP, None, a1]

    def rows(adapters: Sequence[Any]) -> list[Row]:
        return [Row(C.build_inputs(engine.processor, *request), max_new_tokens=12, adapter=a) for a in adapters]

    solo = _alone(engine, rows(choices))
    assert solo[0] != solo[1] != solo[2] and solo[0] == solo[3], "the adapters do not change the answers"
    counter = _GenerateCounter(engine.model)
    monkeypatch.setattr(engine.model, "generate", counter)
    assert _together(engine, rows(choices)) == solo
    assert counter.calls == [5], f"mixed adapters did not run as one generate: {counter.calls}"
    # An adapter with LoRA layers in the vision tower runs in a group of its own, same answers.
    counter.calls.clear()
    solo_v = _alone(engine, rows([vision]))[0]
    counter.calls.clear()
    assert _together(engine, rows([None, vision, a1])) == [solo[0], solo_v, solo[1]]
    assert sorted(counter.calls) == [1, 2]
    assert engine.default_adapter == str(a2.resolve())
    # A broken adapter fails its own request only.
    broken = rows([tmp_path, None])
    answers = []
    with engine.lock:
        for row in broken:
            engine.scheduler.submit(row)
    with pytest.raises(Exception, match="not a PEFT adapter"):
        _tokens(broken[0])
    answers.append(_tokens(broken[1]))
    assert answers == [solo[0]]


def _stream(engine: Engine, request: tuple, gen: C.GenerationSettings, **kwargs: Any):
    stats = C.AnswerStats()
    return C.stream_answer(engine, request[0], request[1], gen, stats=stats, **kwargs), stats


def test_a_client_leaving_or_stopping_mid_batch_ends_only_its_row(llava: Engine) -> None:
    gen = C.GenerationSettings(max_new_tokens=40)
    requests = _requests()
    llava.model.generation_config.min_new_tokens = 40
    try:
        solo = [C.answer(llava, conv, ims, gen) for conv, ims in requests]
        stop = threading.Event()
        streams = [_stream(llava, requests[0], gen), _stream(llava, requests[1], gen, stop_event=stop),
                   _stream(llava, requests[2], gen), _stream(llava, requests[3], gen)]
        results: dict[int, str] = {}

        def read(i: int) -> None:
            stream, _ = streams[i]
            pieces = []
            for piece in stream:
                pieces.append(piece)
                if i == 0 and len(pieces) == 2:
                    stream.close()  # the client disconnects
                    break
                if i == 1 and len(pieces) == 2:
                    stop.set()  # the user presses Stop
            results[i] = "".join(pieces).strip()

        with llava.lock:  # all four start together
            threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            while llava.scheduler.pending() < 4:
                time.sleep(0.01)
        for t in threads:
            t.join(120)
    finally:
        llava.model.generation_config.min_new_tokens = None
    assert llava.scheduler.last_batch_size == 4
    assert results[2] == solo[2] and results[3] == solo[3]
    assert streams[0][1].new_tokens < 10 and streams[1][1].new_tokens < 10, (streams[0][1], streams[1][1])
    assert streams[1][1].stopped and not streams[2][1].stopped
    assert streams[2][1].new_tokens == 40
    assert not llava.lock.locked() and llava.scheduler.pending() == 0


def _broken_image() -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    image = Image.open(io.BytesIO(buf.getvalue()[:80]))  # header fine, data cut off: fails when decoded
    return image


def test_an_image_that_fails_to_decode_fails_only_its_request(llava: Engine) -> None:
    gen = C.GenerationSettings(max_new_tokens=8)
    good = _requests()[:2]
    solo = [C.answer(llava, conv, ims, gen) for conv, ims in good]
    outcome: dict[int, Any] = {}

    def ask(i: int, request: tuple) -> None:
        try:
            outcome[i] = C.answer(llava, request[0], request[1], gen)
        except Exception as err:  # noqa: BLE001
            outcome[i] = err

    bad = ([C.user_message("What is it?", 1)], [_broken_image()])
    threads = [threading.Thread(target=ask, args=(i, r)) for i, r in enumerate([good[0], bad, good[1]])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(outcome[1], ImageError) and "could not be decoded" in str(outcome[1])
    assert "Traceback" not in str(outcome[1])
    assert [outcome[0], outcome[2]] == solo
    assert not llava.lock.locked()


class _OomWhen:
    """Wraps model.forward: raises a CUDA-style OOM at prefill when `when(input_ids)` says so."""

    def __init__(self, model: Any, when: Callable[[torch.Tensor], bool]) -> None:
        self.model, self.when, self.inner = model, when, model.forward
        self.__wrapped__ = self.inner  # generate() reads forward's signature through this
        self.prefill_batches: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] > 1:  # a prefill
            self.prefill_batches.append(int(ids.shape[0]))
            if self.when(ids):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return self.inner(*args, **kwargs)

    def __enter__(self) -> "_OomWhen":
        self.model.forward = self
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.forward


def test_out_of_memory_splits_the_batch_and_fails_only_the_row_that_cannot_fit(llava: Engine) -> None:
    requests = _requests()
    solo = _alone(llava, _rows(llava, requests))
    # Batches of more than two rows do not fit: 4 -> 2 + 2, same answers.
    with _OomWhen(llava.model, lambda ids: ids.shape[0] > 2) as spy:
        assert _together(llava, _rows(llava, requests)) == solo
    assert spy.prefill_batches == [4, 2, 2], spy.prefill_batches
    # The longest prompt does not fit even alone: it gets the message, the others answer.
    longest = max(r.n_input for r in _rows(llava, requests))
    with _OomWhen(llava.model, lambda ids: ids.shape[-1] >= longest):
        rows = _rows(llava, requests)
        with llava.lock:
            for row in rows:
                llava.scheduler.submit(row)
        outcome = []
        for row in rows:
            try:
                outcome.append(_tokens(row))
            except torch.OutOfMemoryError:
                outcome.append("oom")
    assert outcome == [("oom" if r.n_input == longest else s) for r, s in zip(rows, solo)]
    assert outcome.count("oom") == 1
    # Through stream_answer the one request gets the clear message.
    long_request = requests[[r.n_input for r in _rows(llava, requests)].index(longest)]
    with _OomWhen(llava.model, lambda ids: True):
        with pytest.raises(GenerationError, match=r"out of memory while generating \(\d+ input tokens"):
            C.answer(llava, *long_request, C.GenerationSettings(max_new_tokens=8))
    assert not llava.lock.locked() and llava.scheduler.pending() == 0


def test_the_lock_serves_waiters_in_order() -> None:
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        while lock.waiting() < i + 1:
            time.sleep(0.001)
    assert not lock.acquire(timeout=0.05)  # a timed-out waiter does not block the others
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


@pytest.mark.slow  # users ask in a loop until the capture has had its turns: over 20 s under load
def test_capture_gets_the_model_between_batches_while_users_keep_asking(llava: Engine) -> None:
    """The scheduler re-queues for the lock after each batch: a capture waiting for the model
    (the Attention tab holds engine.locked() around its pass) gets it at the next batch end."""
    gen = C.GenerationSettings(max_new_tokens=10)
    request = _requests()[0]
    stop_users = threading.Event()
    answered = [0]

    def user() -> None:
        while not stop_users.is_set():
            C.answer(llava, *request, gen)
            answered[0] += 1

    users = [threading.Thread(target=user) for _ in range(3)]
    for t in users:
        t.start()
    try:
        while answered[0] < 2:
            time.sleep(0.01)
        waits = []
        for _ in range(2):
            start = time.monotonic()
            with llava.locked():  # users keep asking all along: getting it at all means no starvation
                waits.append(time.monotonic() - start)
                before = llava.scheduler.batches
                time.sleep(0.05)
                assert llava.scheduler.batches == before  # no batch starts while the capture holds the model
            deadline = time.monotonic() + 60
            while llava.scheduler.batches == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert llava.scheduler.batches > before, "the users starved after the capture"
    finally:
        stop_users.set()
        for t in users:
            t.join(60)
    assert max(waits) < 60, waits  # one batch at most (seconds under load on 2 shared cores)


def test_requests_still_being_prepared_join_the_batch_that_starts(llava: Engine) -> None:
    """A class whose processing the interpreter serialises reaches the scheduler spread out:
    requests announced with `preparing` join the batch that starts meanwhile (one batch of
    4 here, where the first would otherwise leave alone), and a request refused while being
    prepared does not leave the dispatcher waiting for it."""
    scheduler = llava.scheduler
    assert scheduler.pending() == 0 and scheduler._preparing == 0  # nothing left by another test
    settings = scheduler.settings
    saved = settings.prepare_wait_s, settings.rejoin_steps
    settings.prepare_wait_s, settings.rejoin_steps = 5.0, 0  # only the wait may bring them together
    rows = _rows(llava, _requests())
    barrier = threading.Barrier(len(rows))
    errors: list[BaseException] = []

    def ask(row: Row, delay_s: float) -> None:
        try:
            with scheduler.preparing() as ticket:  # all four announced before any submits
                barrier.wait(timeout=30)
                time.sleep(delay_s)  # the processor, slow under a class's load
                ticket.submit(row)
        except BaseException as err:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(err)

    try:
        before = scheduler.batches
        threads = [threading.Thread(target=ask, args=(row, 0.0 if i == 0 else 0.3)) for i, row in enumerate(rows)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads), errors
        answers = [_tokens(row) for row in rows]
        assert scheduler.batches == before + 1 and scheduler.last_batch_size == len(rows)
        assert all(answers)
        with pytest.raises(InputError):
            C.answer(llava, [], [])  # refused inside `preparing`
        assert scheduler._preparing == 0
    finally:
        settings.prepare_wait_s, settings.rejoin_steps = saved
