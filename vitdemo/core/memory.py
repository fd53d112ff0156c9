"""Out-of-memory errors: recognise them (CUDA, CPU, bitsandbytes word them differently) and
give the memory back before a retry."""

from __future__ import annotations


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


def free_cached_memory() -> None:
    """Return the CUDA caching allocator's free blocks, so a smaller retry can use them."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
