"""A worker's share of a machine's cores, and the GPU question it asks first without touching CUDA."""

import os

import torch

from rsample.workers.runtime import cpu_share


def test_a_worker_takes_the_threads_it_was_given_on_a_machine_without_gpu(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(cpu_share.TORCH_THREADS_ENV, "1")
    try:
        assert cpu_share.take_cpu_share() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv(cpu_share.TORCH_THREADS_ENV)
    assert cpu_share.take_cpu_share() is None


def test_the_gpu_is_asked_for_through_nvml_so_that_vllm_may_still_fork(monkeypatch):
    """torch's runtime check (`cudaGetDeviceCount`) poisons fork; with PYTORCH_NVML_BASED_CUDA_CHECK=1 it asks NVML."""
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: seen.append(os.environ.get(cpu_share.NVML_CHECK_ENV)) or True)
    monkeypatch.delenv(cpu_share.NVML_CHECK_ENV, raising=False)
    monkeypatch.setenv(cpu_share.TORCH_THREADS_ENV, "1")
    assert cpu_share.take_cpu_share() is None  # a GPU: the threads only feed it
    assert seen == ["1"] and cpu_share.NVML_CHECK_ENV not in os.environ  # asked through NVML, and the setting put back
