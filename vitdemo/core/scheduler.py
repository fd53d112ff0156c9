"""The batching scheduler: requests waiting for the model run as one batched `generate`.

A caller processes its own request (chat template, processor: errors stay its own)
inside `with scheduler.preparing() as ticket:`, then `ticket.submit(row)`s it and reads
its tokens from the Row. A dispatcher thread (one per engine, idle threads exit) takes
the model lock, which is first-come first-served, so an attention capture waiting for it
gets its turn between two batches, then takes every waiting request (up to
`max_batch_size`) and runs them as one left-padded `generate` on the generation thread
(vitdemo.core.gen_thread). Each row streams its own tokens and ends on its own
(vitdemo.core.batch_control); the batch ends with its last row: batches are static, new
requests wait for the next one (docs/reliability.md has the figures behind that choice).

When several users are active (in the last `crowd_memory_s`, a request arrived while
another was waiting or running, or two were being prepared at once), the dispatcher
gathers for `gather_s` after the model frees up, so that requests arriving a moment
apart share a batch; and while requests are still being prepared (announced by
`preparing`), it waits for them until the oldest waiting request has waited
`prepare_wait_s`. A user alone never waits for either. A batch that has made at most
`rejoin_steps` tokens restarts with the requests that arrived since it began when they
are at least as many as its rows: the first student of a class starts at once, and the
rest join at the next step instead of waiting for the whole answer. A restarted row
repeats its tokens (the same ones: a batch gives the same answer) without sending them
twice.

Faults: an out-of-memory error splits the batch in halves and retries them (a row
that already streamed tokens skips what it has sent; its seed gives the same draw);
a row that cannot run even alone gets the error. Any other error reruns the rows one
by one, so only the request that causes it fails.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from vitdemo.core import gen_thread
from vitdemo.errors import BusyError

if TYPE_CHECKING:
    from vitdemo.core.engine import Engine

logger = logging.getLogger(__name__)

_END = object()  # in a row's event queue: no more tokens


@dataclass
class SchedulerSettings:
    """How the scheduler forms batches. Figures behind the defaults: docs/reliability.md."""

    max_batch_size: int = 32  # rows in one generate; a class of 30 fits in one batch
    gather_s: float = 0.03  # wait this long for more requests once the model is free, if crowded
    crowd_memory_s: float = 5.0  # "crowded" = two requests were open (or being prepared) at once this recently
    idle_exit_s: float = 30.0  # the dispatcher thread exits after this long without requests
    # While crowded, also wait for requests whose callers are still preparing them, until the
    # oldest waiting request has waited this long: a class whose processing the interpreter
    # serialises otherwise leaves in two batches (e.g. 19 then 11), the second waiting for
    # the first.
    prepare_wait_s: float = 0.2
    # A young batch restarts with the requests that arrived since it began, if they are at
    # least as many as its rows and it has made at most this many tokens (wasted work stays
    # small; a burst of arrivals then shares one batch instead of waiting for the next).
    rejoin_steps: int = 4


class Row:
    """One request in the scheduler: its inputs, settings and the tokens it has made.

    The consumer reads `tokens()`; the generation thread calls `step`/`end`/`fail`.
    """

    def __init__(self, inputs: Mapping[str, Any], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = 0, repetition_penalty: float = 1.0, adapter: Any = None,
                 stop_event: threading.Event | None = None) -> None:
        self.inputs = inputs  # processor output for this request alone, batch 1, on the CPU
        self.n_input = int(inputs["input_ids"].shape[-1])
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        # An unseeded sampled request draws a seed now, so a retry after an OOM draws the same.
        self.seed = secrets.randbits(62) if seed is None else int(seed)
        self.repetition_penalty = repetition_penalty
        self.adapter = adapter  # as the caller gave it: a folder, None or engine.KEEP
        self.resolved_adapter: str | None = None  # set by the scheduler under the lock
        self.stop_event = stop_event or threading.Event()  # the user's Stop
        self.halt = threading.Event()  # the consumer went away
        self.arrived = time.monotonic()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.finished = threading.Event()
        self.batch: _Batch | None = None
        self.produced = 0  # tokens made in the current attempt
        self.delivered = 0  # tokens handed to the consumer over all attempts
        self.attempt_done = False
        self.new_tokens = 0
        self.error: BaseException | None = None

    # --- generation thread ---
    def begin_attempt(self) -> None:
        self.produced = 0
        self.attempt_done = False

    def step(self, token: int, is_eos: bool) -> None:
        self.produced += 1
        if self.produced > self.delivered:  # a retry repeats tokens already sent: skip those
            self.delivered += 1
            self.events.put(token)
        if (is_eos or self.produced >= self.max_new_tokens or self.stop_event.is_set()
                or self.halt.is_set()):
            self.end()

    def end(self) -> None:
        self.attempt_done = True
        if not self.finished.is_set():
            self.new_tokens = self.produced
            self.finished.set()
            self.events.put(_END)

    def fail(self, err: BaseException) -> None:
        self.attempt_done = True
        if not self.finished.is_set():
            self.error = err
            self.new_tokens = self.produced
            self.finished.set()
            self.events.put(_END)

    # --- consumer ---
    def tokens(self) -> Iterator[list[int]]:
        """Token ids as they come (several at once if the reader fell behind); raises the
        row's error at the end."""
        while True:
            item = self.events.get()
            ids: list[int] = []
            while item is not _END:
                ids.append(item)
                try:
                    item = self.events.get_nowait()
                except queue.Empty:
                    break
            if ids:
                yield ids
            if item is _END:
                break
        if self.error is not None:
            raise self.error

    def wait_released(self) -> None:
        """Wait until this row has ended and, if it was the batch's last, the model is free.

        So a caller that returns leaves the model unlocked when nobody else is using it."""
        self.finished.wait()
        batch = self.batch
        if batch is not None and all(r.finished.is_set() for r in batch.rows):
            batch.done.wait()


class Ticket:
    """A request announced by `Scheduler.preparing`, to be submitted once."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.used = False

    def submit(self, row: Row) -> Row:
        if self.used:
            raise RuntimeError("a ticket submits one request")
        self.used = True
        return self.scheduler.submit(row, prepared=True)


@dataclass
class _Batch:
    rows: list[Row]
    done: threading.Event


class Scheduler:
    """Batches the generate calls of one Engine. Use `engine.scheduler`."""

    def __init__(self, engine: Engine, settings: SchedulerSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or SchedulerSettings()
        self._cond = threading.Condition()
        self._pending: list[Row] = []
        self._preparing = 0  # requests inside `preparing` that have not submitted yet
        self._running = False
        self._last_crowd = float("-inf")
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run (for tests and logs)
        self.last_batch_size = 0

    @contextlib.contextmanager
    def preparing(self) -> Iterator[Ticket]:
        """Around a caller's processing of a request; submit it with `ticket.submit(row)`.
        While crowded, the dispatcher waits for it (see `prepare_wait_s`) before it starts
        a batch. Leaving without submitting (the request was refused) withdraws it."""
        with self._cond:
            self._preparing += 1
            self._note_crowd(another_preparing=self._preparing > 1)
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            if not ticket.used:
                ticket.used = True  # withdrawn: a late submit through it is refused, not counted twice
                with self._cond:
                    self._preparing -= 1
                    self._cond.notify_all()

    def submit(self, row: Row, *, prepared: bool = False) -> Row:
        """Queue `row` for the next batch; read its tokens with `row.tokens()`.
        `prepared`: it was announced by `preparing` (use `Ticket.submit`)."""
        with self._cond:
            if prepared:  # with the append: the dispatcher sees it announced or queued, never neither
                self._preparing -= 1
            self._note_crowd()
            row.arrived = time.monotonic()  # queued now: the prepare wait counts from here
            self._pending.append(row)
            if self._thread is None:
                thread = threading.Thread(target=self._dispatch, name="vitdemo-scheduler", daemon=True)
                try:
                    thread.start()
                except BaseException:
                    self._pending.remove(row)  # nobody would ever run it
                    raise
                self._thread = thread
            self._cond.notify_all()
        return row

    def _note_crowd(self, another_preparing: bool = False) -> None:
        """With the condition held: a request meeting another (waiting, running or being
        prepared) means several users are active."""
        if self._pending or self._running or another_preparing:
            self._last_crowd = time.monotonic()

    def cancel(self, row: Row) -> None:
        """The consumer went away: end the row now if it is still waiting, else at the next step."""
        row.halt.set()
        with self._cond:
            if row in self._pending:
                self._pending.remove(row)
                row.end()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    # --- dispatcher thread ---
    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if not self._cond.wait(self.settings.idle_exit_s) and not self._pending:
                        self._thread = None
                        return
                self._gather()
                if not self._pending:  # every waiting request was cancelled meanwhile
                    continue
            if not self.engine.lock.acquire(timeout=self.engine.lock_timeout_s):
                with self._cond:
                    rows, self._pending = self._pending, []
                busy = BusyError(f"the model has been busy for {self.engine.lock_timeout_s:.0f}s; "
                                 "try again in a moment")
                for row in rows:
                    row.fail(busy)
                continue
            with self._cond:
                rows = self._pending[: self.settings.max_batch_size]
                del self._pending[: len(rows)]
                self._running = bool(rows)
            if not rows:
                self.engine.lock.release()
                continue
            try:
                self.engine.begin_hold()  # a new hold: the engine may unload idle adapters now
            except Exception as err:  # noqa: BLE001 - reported to the rows, the model freed
                self._finish_batch(_Batch(rows, threading.Event()), err)
                continue
            batch = _Batch(rows, threading.Event())
            for row in rows:
                row.batch = batch
            try:
                done = gen_thread.submit(lambda: self._run_batch(batch))
            except BaseException as err:  # noqa: BLE001 - the thread could not start: tell the rows
                self._finish_batch(batch, err)
                continue
            done.exception()  # wait; _run_batch reports its own errors to the rows

    def _gather(self) -> None:
        """With the condition held: if users are crowding, wait `gather_s` for more requests,
        and for requests still being prepared until the oldest waiting one has waited
        `prepare_wait_s`."""
        s = self.settings
        if len(self._pending) > 1:
            self._last_crowd = time.monotonic()
        if time.monotonic() - self._last_crowd > s.crowd_memory_s or (s.gather_s <= 0 and s.prepare_wait_s <= 0):
            return
        gather_end = time.monotonic() + s.gather_s
        while self._pending and len(self._pending) < s.max_batch_size:
            now = time.monotonic()
            prepare_end = self._pending[0].arrived + s.prepare_wait_s
            end = max(gather_end, prepare_end) if self._preparing > 0 else gather_end
            if now >= end:
                break
            self._cond.wait(end - now)

    def _finish_batch(self, batch: _Batch, err: BaseException | None) -> None:
        """Release the model, end rows left unended, and mark the batch done."""
        self.last_batch_size = len(batch.rows)
        with self._cond:
            self._running = False
        self.engine.lock.release()
        for row in batch.rows:
            if err is not None:
                row.fail(err)
            else:
                row.end()
        batch.done.set()

    # --- generation thread, model lock held ---
    def _run_batch(self, batch: _Batch) -> None:
        error: BaseException | None = None
        try:
            self.batches += 1
            groups: dict[tuple, list[Row]] = {}
            self._add_to_groups(batch.rows, groups)
            while groups:
                key = next(iter(groups))
                self._run_group(batch, groups.pop(key), key, groups)
        except BaseException as err:  # noqa: BLE001 - reported to every row still waiting
            logger.exception("batch failed")
            error = err
        finally:
            self._finish_batch(batch, error)

    def _add_to_groups(self, rows: list[Row], groups: dict[tuple, list[Row]]) -> None:
        """Rows that can share one generate go in one group (same tensors; mixable adapters)."""
        from vitdemo.core.batch_inputs import compatible_key

        for row in rows:
            if row.halt.is_set() or row.stop_event.is_set():
                row.end()  # asked to stop before it started: nothing to make
                continue
            try:
                row.resolved_adapter = self.engine.prepare_adapter(row.adapter)
                mixable = self.engine.can_mix_adapter(row.resolved_adapter)
            except Exception as err:  # noqa: BLE001 - a broken adapter fails its own request only
                row.fail(err)
                continue
            key = (compatible_key(row.inputs), "mixed" if mixable else row.resolved_adapter)
            groups.setdefault(key, []).append(row)

    def _should_restart(self, steps: int, size: int) -> bool:
        """Called at every step of a generate: restart it with the newcomers?"""
        s = self.settings
        return steps <= s.rejoin_steps and size < s.max_batch_size and len(self._pending) >= size

    def _take_newcomers(self, batch: _Batch, room: int) -> list[Row]:
        with self._cond:
            rows = self._pending[:max(room, 0)]
            del self._pending[: len(rows)]
        for row in rows:
            row.batch = batch
        batch.rows.extend(rows)
        return rows

    def _run_group(self, batch: _Batch, rows: list[Row], key: tuple, later: dict[tuple, list[Row]],
                   grow: bool = True) -> None:
        """Run rows that share one generate; `grow=False` (after an out-of-memory split): no newcomers."""
        while True:
            rows = [r for r in rows if not r.finished.is_set()]
            if not rows:
                return
            try:
                restarted = self._generate(rows, grow)
            except Exception as err:  # noqa: BLE001 - handled below
                self._recover(batch, rows, key, later, err)
                return
            if not restarted:
                return
            newcomers: dict[tuple, list[Row]] = {}
            self._add_to_groups(self._take_newcomers(batch, self.settings.max_batch_size - len(rows)), newcomers)
            joined = newcomers.pop(key, [])
            for other, group in newcomers.items():  # other kinds run after this group
                later.setdefault(other, []).extend(group)
            logger.debug("batch of %d restarts with %d newcomers", len(rows), len(joined))
            rows = rows + joined

    def _recover(self, batch: _Batch, rows: list[Row], key: tuple, later: dict[tuple, list[Row]],
                 err: Exception) -> None:
        """A generate failed: split, retry, or hand the error to the one row."""
        from vitdemo.core.memory import free_cached_memory, is_out_of_memory

        oom = is_out_of_memory(err)
        if oom:
            free_cached_memory()
        if len(rows) == 1:
            logger.warning("a request failed alone (%d input tokens): %s", rows[0].n_input, err)
            rows[0].fail(err)
            return
        live = [r for r in rows if not r.finished.is_set()]
        if oom:
            half = (len(live) + 1) // 2
            parts = [live[:half], live[half:]]
            logger.warning("out of memory with %d rows: retrying as %d + %d", len(live), half, len(live) - half)
        else:
            parts = [[r] for r in live]
            logger.warning("a batch of %d rows failed (%s): retrying each alone", len(live), err)
        for part in parts:
            self._run_group(batch, part, key, later, grow=False)

    def _generate(self, rows: list[Row], grow: bool = True) -> bool:
        """One batched generate of `rows`; True if it stopped early to take in newcomers."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from vitdemo.core.batch_control import RowLogits, RowStop
        from vitdemo.core.batch_inputs import collate, to_model

        engine = self.engine
        model = engine.model
        for row in rows:
            row.begin_attempt()
        batch, pads = collate([r.inputs for r in rows], _pad_token_id(model, engine.processor))
        batch = to_model(batch, model)
        names = engine.batch_adapter_names([r.resolved_adapter for r in rows])
        device = batch["input_ids"].device
        stop = RowStop(rows, _eos_ids(model, engine.processor),
                       restart=(lambda steps: self._should_restart(steps, len(rows))) if grow else None)
        with torch.inference_mode(), engine.adapter_hooks(names) if names else contextlib.nullcontext():
            model.generate(
                **batch,
                max_new_tokens=max(r.max_new_tokens for r in rows),
                do_sample=False, temperature=None, top_p=None, top_k=None,  # rows sample on their own
                logits_processor=LogitsProcessorList([RowLogits(rows, pads, device)]),
                stopping_criteria=StoppingCriteriaList([stop]),
            )
        if stop.restarted:
            return True
        for row in rows:  # generate ended (e.g. the context is full): whatever is left ends too
            row.end()
        return False


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _eos_ids(model: Any, processor: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = _tokenizer(processor).eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _pad_token_id(model: Any, processor: Any) -> int:
    for value in (model.generation_config.pad_token_id, _tokenizer(processor).pad_token_id):
        if value is not None:
            return int(value)
    eos = sorted(_eos_ids(model, processor))
    return eos[0] if eos else 0
