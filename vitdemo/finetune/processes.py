"""Which process this is when a fine-tune runs data-parallel.

`accelerate launch --num_processes N -m vitdemo finetune ...` (or torchrun) starts N copies of
the same command; each trains on its share of every batch (vitdemo.finetune.trainer) and
only the first one writes the job folder, prints and merges (another one that fails leaves
its error for the first to report). One process alone is rank 0 of 1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def rank() -> int:
    """This process's index among the launched ones (RANK, set by the launcher; 0 alone)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    return rank() == 0


def wait_for_everyone() -> None:
    """A barrier across the launched processes (nothing to wait for alone)."""
    if world_size() <= 1:
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


# Every process but the first writes nothing to the job folder, so when one fails the first
# only sees its connection break. Each leaves its error in this file for the first to report.
_FAILURE_FILE = "failed-process-{rank}.txt"


def clear_failure(folder: Path) -> None:
    """Forget this process's error from an earlier run of the same job."""
    (folder / _FAILURE_FILE.format(rank=rank())).unlink(missing_ok=True)


def leave_failure(folder: Path, message: str) -> None:
    """This process's error, for the first process to report (written whole or not at all)."""
    path = folder / _FAILURE_FILE.format(rank=rank())
    partial = path.with_name(path.name + ".partial")
    partial.write_text(message)
    partial.replace(path)


def failures_of_others(folder: Path, wait_s: float) -> list[str]:
    """"process N: message" for each process that left its error; waits up to `wait_s` for
    the first one, because the broken connection can reach this process before the file lands."""
    deadline = time.monotonic() + wait_s
    while True:
        found = sorted(folder.glob(_FAILURE_FILE.format(rank="*")))
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return [f"process {path.stem.rsplit('-', 1)[1]}: {path.read_text()}" for path in found]
