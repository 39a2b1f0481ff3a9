import pytest
import torch

from rsample.workers.backends.batching import run_halving_on_oom


def test_halves_the_batch_on_out_of_memory_and_keeps_order():
    sizes = []

    def run_batch(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in chunk]

    assert run_halving_on_oom(list(range(10)), 8, run_batch) == [x * 10 for x in range(10)]
    assert sizes[:3] == [8, 4, 2]
    assert max(sizes[2:]) <= 3


def test_other_errors_and_single_item_oom_propagate():
    with pytest.raises(ValueError):
        run_halving_on_oom([1, 2], 2, lambda chunk: (_ for _ in ()).throw(ValueError("bad")))

    def always_oom(chunk):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_halving_on_oom([1, 2, 3], 4, always_oom)
