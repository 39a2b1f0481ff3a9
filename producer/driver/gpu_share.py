"""`rsample run` on one GPU: a vLLM engine takes a fixed share of the GPU's memory when it starts (0.9 by default),
which would leave nothing for the reward models loaded beside it. Unless told otherwise, the engine's share is
what the reward models leave: their weights (read from their files) plus room to run them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from rsample.workers.backends.reward_specs import model_path
from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError, first_line

HEADROOM_BYTES = 3 * 2**30
"""Per reward model beside the weights: its process's CUDA context, the activations of a token-budget batch, and
the allocator's slack."""
SMALLEST_ENGINE_SHARE = 0.2
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def weights_bytes(spec: str) -> int:
    """Bytes of a model's weights: its files' sizes for a local folder or GGUF file, else the Hub's safetensors
    metadata (parameters at 2 bytes, as loaded in bf16)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        for pattern in WEIGHT_FILES:
            files = list(path.glob(pattern))
            if files:
                return sum(f.stat().st_size for f in files)
        raise RsampleError(f"no weight files in {spec} to size its GPU memory: pass --gpu-memory-utilization")
    try:
        from huggingface_hub import get_safetensors_metadata

        return 2 * sum(get_safetensors_metadata(spec).parameter_count.values())
    except Exception as exc:
        raise RsampleError(f"cannot size reward model {spec!r} for the shared GPU ({first_line(exc)}): "
                           "pass --gpu-memory-utilization") from None


def engine_share_beside(reward_models: tuple[str, ...], reward_backend: str, gpu_bytes: int,
                        share: float = defaults.VLLM_GPU_MEMORY_UTILIZATION) -> float:
    """The share of the GPU's memory a vLLM generation engine may take with these reward models beside it (a
    `verify:` or `fn:` reward takes none, a judge its model's)."""
    reward_models = tuple(path for spec in reward_models if (path := model_path(spec)) is not None)
    if not reward_models:
        return share
    if reward_backend == "vllm":  # one setting for every engine of the run: each takes an equal part
        return round(share / (1 + len(reward_models)), 2)
    reserved = sum(weights_bytes(spec) + HEADROOM_BYTES for spec in reward_models)
    engine = share - reserved / gpu_bytes
    if engine < SMALLEST_ENGINE_SHARE:
        raise RsampleError(
            f"the reward models need about {reserved / 2**30:.0f} GiB of this GPU's {gpu_bytes / 2**30:.0f} GiB, too little is "
            "left for the vLLM engine: give them GPUs of their own (rsample workers) or pass --gpu-memory-utilization")
    return int(engine * 100) / 100


def gpu_memory_bytes() -> int:
    """The first visible GPU's memory, from nvidia-smi (no CUDA context in this process), else from torch."""
    if shutil.which("nvidia-smi"):
        reading = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
        if reading.returncode == 0 and reading.stdout.strip():
            return int(reading.stdout.split()[0]) * 2**20
    import torch

    return torch.cuda.get_device_properties(0).total_memory
