"""Micro-batching that survives CUDA out-of-memory by halving the batch and retrying."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from rsample.workers.backends.faults import is_out_of_memory

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def run_halving_on_oom(items: Sequence[T], batch_size: int, run_batch: Callable[[Sequence[T]], list[R]]) -> list[R]:
    """Runs `run_batch` over consecutive slices; a slice that runs out of memory is split in two.

    A single item that still runs out of memory re-raises: nothing smaller can be tried.
    """
    results: list[R] = []
    start = 0
    while start < len(items):
        chunk = items[start:start + batch_size]
        try:
            results.extend(run_batch(chunk))
        except Exception as exc:
            if not is_out_of_memory(exc) or batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory on %d items: retrying with batches of %d", len(chunk), batch_size)
            _free_cuda_cache()
            continue
        start += len(chunk)
    return results


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
