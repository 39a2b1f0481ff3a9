"""Forward passes sized by a token budget that survives CUDA out-of-memory by halving, and remembers what fit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from rsample.workers.backends.faults import is_out_of_memory

R = TypeVar("R")

log = logging.getLogger(__name__)


class TokenBudget:
    """Padded tokens per forward pass (a batch costs its size times its longest sequence), and a cap on sequences.

    Sequences sorted by length fill each batch up to the budget, so short ones travel many at a time and long ones
    few. Past a quarter of the budget a batch also stops growing where padding would pass a fifth of it: a job's
    conversations spread over many lengths, and padding costs as much as real tokens (a quarter of the budget still
    keeps a GPU busy). A batch that runs out of memory halves the budget for good: the next job starts from the size
    that fit instead of failing its way down again.
    """

    min_fill = 0.8
    """Real tokens / padded tokens a batch keeps once it is past `free_share` of the budget."""
    free_share = 0.25

    def __init__(self, tokens: int, max_sequences: int):
        if tokens < 1 or max_sequences < 1:
            raise ValueError("a token budget and its sequence cap must be at least 1")
        self.tokens = tokens
        self.max_sequences = max_sequences

    def batch_end(self, lengths: Sequence[int], start: int) -> int:
        """Where the batch that starts at `start` ends; `lengths` ascending. Always at least one sequence."""
        end, real = start + 1, lengths[start]
        limit = min(len(lengths), start + self.max_sequences)
        while end < limit:
            padded = (end + 1 - start) * lengths[end]
            if padded > self.tokens or (padded > self.free_share * self.tokens and real + lengths[end] < self.min_fill * padded):
                break
            real += lengths[end]
            end += 1
        return end

    def run(self, sequences: Sequence[list[int]], run_batch: Callable[[Sequence[list[int]]], R]) -> list[R]:
        """Runs `run_batch` over consecutive batches of `sequences` (sorted by length, shortest first); returns what
        each batch returned, in order (device tensors may stay unread until the end: no sync between batches).

        A single sequence that still runs out of memory re-raises: nothing smaller can be tried.
        """
        lengths = [len(sequence) for sequence in sequences]
        results: list[R] = []
        start = 0
        while start < len(sequences):
            end = self.batch_end(lengths, start)
            try:
                results.append(run_batch(sequences[start:end]))
            except Exception as exc:
                if not is_out_of_memory(exc) or end - start == 1:
                    raise
                self.tokens = max(1, min(self.tokens, (end - start) * lengths[end - 1]) // 2)
                log.warning("out of memory on %d sequences of up to %d tokens: %d padded tokens per batch from now on",
                            end - start, lengths[end - 1], self.tokens)
                _free_cuda_cache()
                continue
            start = end
        return results


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
