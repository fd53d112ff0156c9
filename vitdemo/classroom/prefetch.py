"""Build training batches in a child process while the parent trains on the previous ones.

Drawing scenes is about a quarter of a stage-4 step on the 2-core CPU; the child draws
them with the same BatchMaker (same random state), so the batches and their order are
exactly those the parent would have built in place, and the parent's random state is
moved on to where the child's ended, so what runs after the stage sees the same numbers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_module
from typing import Any

import torch

from vitdemo.classroom.batches import BatchMaker

log = logging.getLogger(__name__)

_DONE = "done"


def _produce(maker: BatchMaker, method: str, kwargs: dict[str, Any], count: int, out) -> None:
    torch.set_num_threads(1)  # the parent trains on the other threads
    try:
        for _ in range(count):
            # numpy through the pipe: shared-memory tensors would need this process alive
            # until the parent has read them
            batch = getattr(maker, method)(**kwargs)
            out.put({key: value.numpy() for key, value in batch.items()})
        out.put((_DONE, maker.rng.bit_generator.state))
    except BaseException as exc:  # report to the parent instead of leaving it waiting
        out.put(("error", repr(exc)))


class Prefetcher:
    """`count` batches of `getattr(maker, method)(**kwargs)`, built ahead in a child process.

    Use as a context manager; call `next()` exactly `count` times."""

    def __init__(self, maker: BatchMaker, method: str, kwargs: dict[str, Any], count: int, depth: int = 3):
        self.maker = maker
        self.count = count
        self.taken = 0
        ctx = mp.get_context("spawn")  # fork after torch has started threads can hang
        self.queue = ctx.Queue(maxsize=depth)
        self.process = ctx.Process(target=_produce, args=(maker, method, kwargs, count, self.queue), daemon=True)

    def __enter__(self) -> "Prefetcher":
        self.process.start()
        return self

    def _get(self):
        while True:
            try:
                return self.queue.get(timeout=5)
            except queue_module.Empty:
                if not self.process.is_alive():
                    raise RuntimeError("the batch-building process stopped unexpectedly") from None

    def next(self) -> dict[str, torch.Tensor]:
        if self.taken >= self.count:
            raise RuntimeError(f"all {self.count} prefetched batches were taken")
        item = self._get()
        if isinstance(item, tuple) and item[0] == "error":
            raise RuntimeError(f"building a batch failed: {item[1]}")
        self.taken += 1
        if self.taken == self.count:
            done = self._get()
            self.maker.rng.bit_generator.state = done[1]
        return {key: torch.from_numpy(value) for key, value in item.items()}

    def __exit__(self, *exc) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
