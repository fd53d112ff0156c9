"""Continuous batching vs the app's static batches, side by side, on arrivals spread in time.

    python bench/continuous_batching.py [--users 16] [--window-s 3] [--lengths 8,48] [--runs 2]

The app's scheduler runs static batches: a batch ends with its longest row, and newcomers
wait for the next one (or restart a batch that has made at most 4 tokens). Continuous
batching lets a request join the running batch at the next step and frees a row's place
the moment it ends. This script measures what that would gain here before the app pays for
it (a decode loop of its own, per-model position handling): a prototype continuous loop
for Llama-based LLaVA models, greedy only, is in this file, and NOT in the app.

Workload: --users requests arriving at seeded random times over --window-s, each asking for
its own answer length (uniform in --lengths; the model never ends early: min_new_tokens),
each with its own image. Same model (the ~76M random LLaVA of bench/batching.py), same
inputs, one after the other in one process, alternating which goes first. Reported:
time to the last answer, p50 and p95 of each user's wait (arrival to last token), and
whether every greedy answer equals the same request's answer alone.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = "What is in the picture?"


@dataclass
class Request:
    index: int
    arrival_s: float  # after the start of the run
    length: int  # new tokens asked for
    inputs: dict[str, Any] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    done_s: float = 0.0


class ContinuousLoop:
    """A prototype: one decode loop whose batch takes newcomers at every step.

    A newcomer's prompt is prefilled alone (its cache is then exactly its solo one) and its
    cache is joined to the batch's, both left-padded with masked zeros to one length. Each
    row keeps its own position. A row that has its tokens leaves the batch at once.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        eos = model.generation_config.eos_token_id
        # the bench model never ends early (min_new_tokens): neither do these rows
        self.eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.banned = self.eos + list(model.generation_config.suppress_tokens or [])  # as generate does
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.rows: list[Request] = []
        self.cache: Any = None
        self.mask: Any = None  # (B, L) 1 = a real token
        self.positions: Any = None  # (B,) position of each row's next token
        self.last: Any = None  # (B,) each row's last token, fed at the next step
        self.steps = 0

    def run(self, total: int, start: float) -> None:
        import torch

        finished = 0
        with torch.inference_mode():
            while finished < total:
                self._admit(block=not self.rows, start=start)
                if not self.rows:
                    continue
                self._step()
                finished += self._release(start)

    def _admit(self, block: bool, start: float) -> None:
        while True:
            try:
                req = self.inbox.get(timeout=60) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            self._join(req, start)

    def _join(self, req: Request, start: float) -> None:
        import torch

        out = self.model(**req.inputs, use_cache=True)
        first = int(self._greedy(out.logits[:, -1])[0])
        req.tokens.append(first)
        n = int(req.inputs["input_ids"].shape[1])
        cache = out.past_key_values
        row_mask = torch.ones((1, n), dtype=torch.long)
        if self.cache is None:
            self.cache, self.mask = cache, row_mask
            self.positions = torch.tensor([n])
            self.last = torch.tensor([first])
        else:
            width = max(self.mask.shape[1], n)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)])
                mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)])
            self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(row_mask, width)])
            self.positions = torch.cat([self.positions, torch.tensor([n])])
            self.last = torch.cat([self.last, torch.tensor([first])])
        self.rows.append(req)

    def _step(self) -> None:
        import torch

        live = [i for i, r in enumerate(self.rows) if len(r.tokens) < r.length]
        if not live:
            return
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        out = self.model(input_ids=self.last[:, None], attention_mask=self.mask,
                         position_ids=self.positions[:, None], past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        nxt = self._greedy(out.logits[:, -1])
        self.steps += 1
        for i, row in enumerate(self.rows):
            if len(row.tokens) < row.length:
                row.tokens.append(int(nxt[i]))
        self.last = nxt
        self.positions = self.positions + 1

    def _greedy(self, logits: Any) -> Any:
        logits = logits.clone()
        logits[:, self.banned] = float("-inf")
        return logits.argmax(-1)

    def _release(self, start: float) -> int:
        import torch

        keep = [i for i, r in enumerate(self.rows) if len(r.tokens) < r.length]
        gone = len(self.rows) - len(keep)
        if not gone:
            return 0
        now = time.perf_counter() - start
        for r in self.rows:
            if len(r.tokens) >= r.length:
                r.done_s = now
        if not keep:
            self.rows, self.cache = [], None
            return gone
        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        unused = int((self.mask.sum(0) == 0).cumprod(0).sum())  # leading columns no row uses
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, unused:], layer.values[index, :, unused:]
        self.mask = self.mask[:, unused:]
        return gone


def _pad(t: Any, width: int) -> Any:
    import torch

    missing = width - t.shape[2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3])), t], dim=2)


def _pad_mask(m: Any, width: int) -> Any:
    import torch

    missing = width - m.shape[1]
    return m if missing == 0 else torch.cat([m.new_zeros((m.shape[0], missing)), m], dim=1)


def workload(n: int, window_s: float, lengths: tuple[int, int], seed: int) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    arrivals = sorted(rng.uniform(0, window_s) for _ in range(n))
    arrivals[0] = 0.0
    return [(a, rng.randint(*lengths)) for a in arrivals]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--window-s", type=float, default=3.0, help="arrivals spread at random over this")
    parser.add_argument("--lengths", default="8,48", help="answer lengths: uniform in this range")
    parser.add_argument("--runs", type=int, default=2, help="workloads (seeds 0..runs-1)")
    args = parser.parse_args()
    low, high = (int(x) for x in args.lengths.split(","))

    import torch

    from batching import build_model, images
    from vitdemo.chat import conversation as C
    from vitdemo.config import setup_logging
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    setup_logging()
    folder = build_model(Path(tempfile.mkdtemp()) / "llava76m", high)
    engine = Engine(load_model(folder))
    model, processor = engine.model, engine.processor
    conv = [C.user_message(QUESTION, 1)]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    imgs = images(args.users)
    print(f"{args.users} users over {args.window_s:.1f} s, answers of {low}-{high} tokens, "
          f"{os.cpu_count()} CPUs; ~{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M-parameter LLaVA",
          flush=True)

    def solo(img: Any, length: int) -> list[int]:
        inputs = processor(text=[prompt], images=[img], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=length, do_sample=False)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    def static(plan: list[tuple[float, int]]) -> list[Request]:
        reqs = [Request(i, a, n) for i, (a, n) in enumerate(plan)]
        start = time.perf_counter()

        def user(r: Request) -> None:
            time.sleep(max(0.0, start + r.arrival_s - time.perf_counter()))
            text = C.answer(engine, conv, [imgs[r.index]], C.GenerationSettings(max_new_tokens=r.length))
            r.done_s = time.perf_counter() - start
            r.tokens = processor.tokenizer(text, add_special_tokens=False)["input_ids"]

        threads = [threading.Thread(target=user, args=(r,)) for r in reqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return reqs

    def continuous(plan: list[tuple[float, int]]) -> list[Request]:
        reqs = [Request(i, a, n) for i, (a, n) in enumerate(plan)]
        loop = ContinuousLoop(model)
        start = time.perf_counter()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                loop.run(len(reqs), start)
            except BaseException as err:  # noqa: BLE001 - raised in the main thread below
                failure.append(err)

        worker = threading.Thread(target=run)
        worker.start()
        for r in reqs:  # arrivals: each request is processed by its caller, then handed over
            time.sleep(max(0.0, start + r.arrival_s - time.perf_counter()))
            r.inputs = dict(processor(text=[prompt], images=[imgs[r.index]], return_tensors="pt"))
            loop.inbox.put(r)
        worker.join()
        if failure:
            raise failure[0]
        if any(r.done_s <= 0 for r in reqs):
            raise RuntimeError("the continuous loop left requests unanswered")
        return reqs

    def figures(reqs: list[Request]) -> tuple[float, float, float]:
        # p95 = the value at rank round(0.95 n), as bench/batching.py (the 15th of 16)
        waits = sorted(r.done_s - r.arrival_s for r in reqs)
        p95 = waits[max(0, int(round(0.95 * len(waits))) - 1)]
        return max(r.done_s for r in reqs), statistics.median(waits), p95

    static(workload(2, 0.0, (low, low), 99))  # warm-up
    continuous(workload(2, 0.0, (low, low), 99))
    rows = {"static (app default)": [], "continuous (prototype)": []}
    equal = {"static (app default)": True, "continuous (prototype)": True}
    for run in range(args.runs):
        plan = workload(args.users, args.window_s, (low, high), run)
        references = [solo(imgs[i], n) for i, (_, n) in enumerate(plan)]
        order = ["static (app default)", "continuous (prototype)"]
        if run % 2:
            order.reverse()
        for name in order:
            reqs = static(plan) if name.startswith("static") else continuous(plan)
            rows[name].append(figures(reqs))
            if name.startswith("continuous"):
                equal[name] &= all(r.tokens == references[r.index] for r in reqs)
            else:  # the app returns text: compare the decoded solo answers
                equal[name] &= all(processor.tokenizer.decode(references[r.index], skip_special_tokens=True).strip()
                                   == processor.tokenizer.decode(r.tokens, skip_special_tokens=True).strip()
                                   for r in reqs)
    alone = statistics.median(time_solo(solo, imgs[0], (low + high) // 2) for _ in range(3))
    print(f"one answer of {(low + high) // 2} tokens alone: {alone:.2f} s; medians over {args.runs} workloads")
    print(f"  {'server':<24} {'last answer s':>14} {'p50 wait s':>11} {'p95 wait s':>11} {'equal to solo':>14}")
    for name, values in rows.items():
        last, p50, p95 = (statistics.median(v[k] for v in values) for k in range(3))
        print(f"  {name:<24} {last:>14.2f} {p50:>11.2f} {p95:>11.2f} {'yes' if equal[name] else 'NO':>14}", flush=True)


def time_solo(solo: Any, img: Any, length: int) -> float:
    start = time.perf_counter()
    solo(img, length)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
