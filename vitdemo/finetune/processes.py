"""Which process this is when a fine-tune runs data-parallel.

`accelerate launch --num_processes N -m vitdemo finetune ...` (or torchrun) starts N copies of
the same command; each trains on its share of every batch (vitdemo.finetune.trainer) and
only the first one writes the job folder, prints and merges. One process alone is rank 0 of 1.
"""

from __future__ import annotations

import os


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
