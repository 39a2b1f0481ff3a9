"""Token-budget batches: full but never over budget, in order, and an out-of-memory halving that is remembered."""

import random

import pytest
import torch

from rsample.workers.backends.batching import TokenBudget


def sequences(lengths):
    return [[7] * length for length in sorted(lengths)]


def test_batches_fill_the_budget_without_passing_it_or_wasting_it_on_padding():
    lengths = sorted(random.Random(0).randint(1, 300) for _ in range(500))
    seen = []
    budget = TokenBudget(2048, 64)
    per_batch = budget.run(sequences(lengths), lambda batch: (seen.append([len(s) for s in batch]), [len(s) for s in batch])[1])
    assert [length for batch in per_batch for length in batch] == lengths
    assert [length for batch in seen for length in batch] == lengths  # every sequence once, in order
    position = 0
    for batch in seen:
        position += len(batch)
        padded = len(batch) * max(batch)
        assert len(batch) <= 64 and (len(batch) == 1 or padded <= 2048)
        assert padded <= 512 or sum(batch) >= 0.8 * padded  # past a quarter of the budget, padding stays under a fifth
        if position < len(lengths) and len(batch) < 64:  # full: one more would pass the budget or pad too much
            grown = (len(batch) + 1) * lengths[position]
            assert grown > 2048 or (grown > 512 and sum(batch) + lengths[position] < 0.8 * grown)


def test_a_sequence_longer_than_the_budget_goes_alone():
    seen = []
    TokenBudget(100, 8).run(sequences([10, 10, 500]), lambda batch: seen.append(len(batch)) or [0] * len(batch))
    assert seen == [2, 1]


def test_out_of_memory_halves_the_budget_for_this_and_later_jobs():
    sizes = []

    def run_batch(batch):
        sizes.append(len(batch) * len(batch[-1]))
        if len(batch) * len(batch[-1]) > 300:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [len(s) for s in batch]

    budget = TokenBudget(1000, 100)
    assert [x for batch in budget.run(sequences([10] * 40), run_batch) for x in batch] == [10] * 40
    assert sizes[:3] == [400, 200, 200] and budget.tokens == 200  # 400 failed: the budget is half of what failed
    sizes.clear()
    budget.run(sequences([10] * 40), run_batch)
    assert max(sizes) == 200  # the next job starts from what fit


def test_other_errors_and_a_single_sequence_out_of_memory_propagate():
    with pytest.raises(ValueError):
        TokenBudget(100, 4).run(sequences([1, 2]), lambda batch: (_ for _ in ()).throw(ValueError("bad")))

    def always_oom(batch):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        TokenBudget(100, 4).run(sequences([1, 2, 3]), always_oom)
