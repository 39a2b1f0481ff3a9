"""Worker processes started together on one machine without a GPU share its cores instead of each taking all of them.

torch gives every process one thread per core, and its OpenMP threads spin while they wait for work: a
generation worker and a reward worker busy at once run twice as many threads as there are cores and slow each
other down (measured on 2 cores: the pipeline at 0.63 of one process doing the same work in a straight line).
On such a machine `rsample run` starts workers of both roles instead (each generates and scores, one job at a
time), and each takes its share of the cores.
"""

from __future__ import annotations

import logging
import os

TORCH_THREADS_ENV = "RSAMPLE_TORCH_THREADS"
"""torch threads for a worker on a machine without a GPU (set by `rsample run` for the workers it starts)."""

NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s limit, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_has_gpu() -> bool:
    """Asked through NVML, as vLLM asks: a CUDA runtime call in a worker before vLLM starts its engine process by fork
    (its default, when CUDA is not initialised) would leave that process unable to use CUDA ("Cannot re-initialize
    CUDA in forked subprocess")."""
    import torch

    previous = os.environ.get(NVML_CHECK_ENV)
    os.environ[NVML_CHECK_ENV] = "1"
    try:
        return torch.cuda.is_available()
    finally:
        if previous is None:
            del os.environ[NVML_CHECK_ENV]
        else:
            os.environ[NVML_CHECK_ENV] = previous


def local_worker_roles(generate_workers: int, on_gpu: bool) -> list[str]:
    """The workers `rsample run` starts: on a GPU, generation workers and a reward worker beside them; on a CPU,
    workers of both roles, so that generating and scoring take turns on the cores rather than fight over them."""
    if on_gpu:
        return ["generate"] * generate_workers + ["reward"]
    return ["both"] * generate_workers


def sharing_environment(workers: int) -> dict[str, str]:
    """The environment entries that give a worker its share of this machine's cores, among `workers` of them."""
    return {TORCH_THREADS_ENV: str(max(1, usable_cores() // max(1, workers)))}


def take_cpu_share() -> int | None:
    """On a CPU-only machine, limits torch to the threads the launcher gave this worker; returns them (None: no limit)."""
    value = os.environ.get(TORCH_THREADS_ENV)
    if not value:
        return None
    import torch

    if machine_has_gpu():  # the model runs on the GPU: these threads only feed it
        return None
    torch.set_num_threads(int(value))
    log.info("sharing this machine's %d cores with other workers: %s torch thread(s)", usable_cores(), value)
    return int(value)
