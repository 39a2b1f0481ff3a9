"""GPU time of a reward device's passes, read from CUDA events once per round (after the round's one wait).

The host's clock cannot tell a GPU that computes slowly from one left waiting: a round's batches are queued
without waiting, so its host time includes whatever starved the GPU. Events recorded around each pass give the
GPU's own account: the passes' time, and each round's span from its first pass's start to its last one's end.
"""

from __future__ import annotations


class CudaPassClock:
    """Events around each pass of the current round; `collect()` (after the round's results are read) returns the
    passes' summed GPU seconds and the round's GPU span, and starts the next round."""

    def __init__(self):
        self._pairs: list[tuple] = []

    def before_pass(self) -> None:
        import torch

        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self._pairs.append((start, None))

    def after_pass(self) -> None:
        import torch

        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pairs[-1] = (self._pairs[-1][0], end)

    def discard(self) -> None:
        self._pairs = []

    def collect(self) -> tuple[float, float]:
        pairs, self._pairs = [(start, end) for start, end in self._pairs if end is not None], []
        if not pairs:
            return 0.0, 0.0
        pairs[-1][1].synchronize()
        passes = sum(start.elapsed_time(end) for start, end in pairs) / 1000
        return passes, pairs[0][0].elapsed_time(pairs[-1][1]) / 1000


def pass_clock(device: str) -> CudaPassClock | None:
    """A clock where the device is a GPU; None on a CPU, where a pass's host time is its device time."""
    return CudaPassClock() if device == "cuda" else None
