"""Training batches drawn by worker processes, for builds whose model trains on a GPU.

On the 2-core CPU the training process draws its own batches (drawing beside training
there only slowed a step down: docs/classroom.md). On a GPU the model's step takes a few
milliseconds and drawing scenes is the whole cost, so several processes draw ahead.
A build with workers is not reproducible batch for batch: which worker draws which batch
depends on timing.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from typing import Iterable, Iterator

import numpy as np
import torch

from vitdemo.classroom.batches import BatchMaker

BatchCall = tuple[str, tuple]  # (BatchMaker method, its arguments)

_maker: BatchMaker | None = None  # one per worker process


def _start_worker(processor, seed: int, indices) -> None:
    global _maker
    torch.set_num_threads(1)
    rng = np.random.default_rng([seed, indices.get()])  # each worker its own stream
    _maker = BatchMaker(processor, rng)


def _draw(call: BatchCall) -> dict[str, np.ndarray]:
    method, args = call
    batch = getattr(_maker, method)(*args)
    return {name: tensor.numpy() for name, tensor in batch.items()}


class BatchWorkers:
    """A pool of processes drawing batches, `depth` ahead of the training loop."""

    def __init__(self, processor, seed: int, workers: int, depth: int = 8):
        if workers < 1:
            raise ValueError(f"need at least one worker, got {workers}")
        context = multiprocessing.get_context("spawn")  # torch's threads do not survive fork
        indices = context.Queue()
        for index in range(workers):
            indices.put(index)
        self.depth = max(depth, workers)
        self.pool = context.Pool(workers, initializer=_start_worker, initargs=(processor, seed, indices))

    def stream(self, calls: Iterable[BatchCall]) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of `calls`, in order; at most `depth` drawn ahead."""
        pending: deque = deque()
        for call in calls:
            pending.append(self.pool.apply_async(_draw, (call,)))
            if len(pending) >= self.depth:
                yield _tensors(pending.popleft().get())
        while pending:
            yield _tensors(pending.popleft().get())

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in arrays.items()}
