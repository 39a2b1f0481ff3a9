"""A generation backend that works for a while and then breaks for good, as a GPU does after a sticky CUDA error.

`python tests/breaking_backends.py worker generate ...` runs a real `rsample worker` whose echo backend is this one.
"""

from __future__ import annotations

import os
import sys

from rsample.workers.backends.zero_cost import EchoGenerator

CUDA_FAULT = "CUDA error: an illegal memory access was encountered"


class BreakingGenerator(EchoGenerator):
    """Echo for `works` calls (RSAMPLE_TEST_WORKS in a worker process), then a sticky CUDA error on every call."""

    def __init__(self, works: int = 1):
        self.works = works
        self.calls = 0

    @classmethod
    def from_run(cls, config) -> BreakingGenerator:
        return cls(int(os.environ.get("RSAMPLE_TEST_WORKS", "1")))

    def generate(self, prompts, sampling, seed, progress=None):
        self.calls += 1
        if self.calls > self.works:
            raise RuntimeError(CUDA_FAULT)
        return super().generate(prompts, sampling, seed)


if __name__ == "__main__":
    from rsample.producer.cli import main
    from rsample.workers.backends import registry

    registry.GENERATION_BACKENDS["echo"] = f"{__name__}:BreakingGenerator"
    sys.modules.setdefault("breaking_backends", sys.modules[__name__])
    main(sys.argv[1:])
