"""Telling a broken worker from bad data: which backend errors belong to one prompt, and which to the device.

A prompt's own error (its template, its tokens, its length) may skip that prompt. Out-of-memory is retried
with smaller batches. A dead engine or a sticky CUDA error (illegal memory access, device-side assert) breaks
every later call on this device: skipping prompts for it would drain the whole dataset into permanent skips, so
the job fails (to run elsewhere) and the worker ends (to be restarted on a fresh context).
"""

from __future__ import annotations

DEVICE_FAULT_MARKERS = (
    "cuda error", "device-side assert", "illegal memory access", "unspecified launch failure", "cublas_status",
    "cudnn_status", "nccl error", "uncorrectable ecc", "the vllm engine stopped", "engine core", "enginedeaderror",
)
"""Lower-case fragments of the messages of errors that leave the device or the engine unusable."""


class WorkerFault(RuntimeError):
    """The worker, not the data, failed: the job is retried elsewhere and this worker stops."""

    cause = "a fault of its device or engine"
    blame = "a worker fault, not the data"


class RewardFunctionFault(WorkerFault):
    """A `fn:` reward that fails on (nearly) every prompt alone: an error in its code, not in the data. The worker
    stops as for a broken device, so that the run stops early instead of skipping the whole dataset for it."""

    cause = "an error in a reward function"
    blame = "an error in the function, not in the data: fix it, then run the same command again (what is written is kept)"


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def is_device_fault(exc: BaseException) -> bool:
    if isinstance(exc, WorkerFault) or type(exc).__name__ in ("AcceleratorError", "EngineDeadError"):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in DEVICE_FAULT_MARKERS)


def is_worker_fault(exc: BaseException) -> bool:
    """Never a prompt's fault: out of memory (retried smaller) or a broken device or engine."""
    return is_out_of_memory(exc) or is_device_fault(exc)
