"""GPU ids as this process sees them: among those an inherited CUDA_VISIBLE_DEVICES lists (a Slurm job's allocation,
a Kubernetes pod's), else the machine's, as torch and nvidia-smi inside the allocation count them."""

from __future__ import annotations

import os

from rsample.workers.common.errors import RsampleError


def pinned_devices(ids: list[int]) -> str:
    """The CUDA_VISIBLE_DEVICES value that shows a worker the GPUs `ids`: `--generate 0` inside an allocation of GPUs 2
    and 3 is GPU 2 (pinning it to the machine's GPU 0 would take a GPU another job holds)."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return ",".join(map(str, ids))
    visible = []
    for device in (entry.strip() for entry in inherited.split(",")):
        if not device or device.startswith("-") or device == "NoDevFiles":  # CUDA reads the list up to such an entry
            break
        visible.append(device)
    if not visible:  # GPUs hidden on purpose (empty, -1): they stay hidden, and the workers run on the CPU, said where they start
        return ""
    beyond = sorted({gpu for gpu in ids if gpu >= len(visible)})
    if beyond:
        shown = f"{len(visible)} GPU{'s' * (len(visible) != 1)} (ids 0 to {len(visible) - 1})"
        raise RsampleError(f"no GPU {', '.join(map(str, beyond))} here: CUDA_VISIBLE_DEVICES={inherited} shows {shown}, "
                           "and rsample counts GPU ids among those")
    return ",".join(visible[gpu] for gpu in ids)


def parse_gpu_option(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise RsampleError(f"--gpu {value}: give GPU ids (numbers, as 0 or 0,1)") from None
