"""Token-budget batches: the cheapest split, never over budget, in order, and an out-of-memory halving that is remembered."""

import random

import pytest
import torch

from rsample.workers.backends.batching import TokenBudget


def sequences(lengths):
    return [[7] * length for length in sorted(lengths)]


def groupings(items):
    """Every way to split `items` into groups (set partitions), order ignored."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in groupings(rest):
        yield [[first], *partition]
        for k in range(len(partition)):
            yield [*partition[:k], [first, *partition[k]], *partition[k + 1:]]


def cheapest_grouping(lengths, tokens, max_sequences, pass_cost):
    """Brute force over every grouping of the sequences, contiguous or not: an oracle for small inputs."""
    def feasible(group):
        return len(group) <= max_sequences and (len(group) == 1 or len(group) * max(group) <= tokens)

    return min(sum(len(g) * max(g) + pass_cost for g in grouping)
               for grouping in groupings(list(lengths)) if all(feasible(g) for g in grouping))


@pytest.mark.parametrize("seed", range(40))
def test_the_split_is_the_cheapest_of_all_groupings(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 7)))
    budget = TokenBudget(rng.choice([40, 80, 160]), rng.choice([2, 3, 8]), pass_cost=rng.choice([0, 10, 50]))
    ends = budget.plan(lengths)
    batches = [lengths[start:end] for start, end in zip([0, *ends], ends)]
    assert [x for batch in batches for x in batch] == lengths and ends[-1] == len(lengths)
    for batch in batches:
        assert len(batch) <= budget.max_sequences and (len(batch) == 1 or len(batch) * batch[-1] <= budget.tokens)
    cost = sum(len(batch) * batch[-1] + budget.pass_cost for batch in batches)
    assert cost == cheapest_grouping(lengths, budget.tokens, budget.max_sequences, budget.pass_cost)


def naive_plan(lengths, tokens, max_sequences, pass_cost):
    """The least-cost split by its definition: at each end, every allowed start tried, the first of the cheapest kept."""
    cost, start_of = [0] * (len(lengths) + 1), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        width = lengths[end - 1]
        size = min(max_sequences, max(1, tokens // max(1, width)), end)
        best = min(range(end - size, end), key=lambda start: (cost[start] + (end - start) * width, start))
        cost[end], start_of[end] = cost[best] + (end - best) * width + pass_cost, best
    ends, end = [], len(lengths)
    while end > 0:
        ends.append(end)
        end = start_of[end]
    return ends[::-1]


@pytest.mark.parametrize("seed", range(30))
def test_long_inputs_split_exactly_as_the_definition_says(seed):
    """Thousands of sequences with many equal lengths, as a round of 16 jobs holds: the same batches, ties included."""
    rng = random.Random(seed)
    top = rng.choice([40, 300, 3000])
    lengths = sorted(rng.randint(1, top) for _ in range(rng.randint(1, 3000)))
    tokens, max_sequences, pass_cost = rng.choice([64, 1024, 16384]), rng.choice([1, 7, 128]), rng.choice([0, 1024, 5000])
    assert TokenBudget(tokens, max_sequences, pass_cost).plan(lengths) == naive_plan(lengths, tokens, max_sequences, pass_cost)


def test_batches_run_every_sequence_once_in_order_and_pad_little():
    lengths = sorted(random.Random(0).randint(1, 300) for _ in range(500))
    seen = []
    budget = TokenBudget(2048, 64)
    per_batch = budget.run(sequences(lengths), lambda batch: (seen.append([len(s) for s in batch]), [len(s) for s in batch])[1])
    assert [length for batch in per_batch for length in batch] == lengths
    assert [length for batch in seen for length in batch] == lengths  # every sequence once, in order
    assert all(len(batch) <= 64 and (len(batch) == 1 or len(batch) * max(batch) <= 2048) for batch in seen)
    padded = sum(len(batch) * max(batch) for batch in seen)
    assert sum(lengths) >= 0.9 * padded  # dense lengths: a tenth of padding at most
    assert len(seen) <= 1.25 * padded / 2048  # and few passes: most batches near the budget


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


def test_a_single_sequence_out_of_memory_is_left_out_when_the_caller_says_how():
    """Too big for the device even alone: its position is named, the others are run as if it were not there."""
    def small_device(batch):
        if max(len(s) for s in batch) > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [len(s) for s in batch]

    too_big = []
    budget = TokenBudget(1000, 8)
    ran = budget.run(sequences([3, 5, 50, 60]), small_device, too_big.append)
    assert [x for batch in ran for x in batch] == [3, 5] and too_big == [2, 3]
    assert budget.tokens < 1000  # the batch that failed first halved the budget, as any batch does
