"""Generation backends that break what they run on: a GPU that breaks for good after a sticky CUDA error, and a Redis
that restarts empty while a batch is generated.

`python tests/breaking_backends.py worker generate ...` runs a real `rsample worker` whose echo backend is one of them
(`RSAMPLE_TEST_BACKEND`: BreakingGenerator by default).
"""

from __future__ import annotations

import os
import sys

import redis

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


class ForgettingGenerator(EchoGenerator):
    """While it generates its first batch, Redis restarts empty (FLUSHALL) and the run's coordinator makes the run again,
    as `Coordinator.ensure_run` does; then it echoes, or (RSAMPLE_TEST_THEN=fault) meets a sticky CUDA error."""

    def __init__(self, run_id: str):
        self.run_id, self.calls = run_id, 0

    @classmethod
    def from_run(cls, config) -> ForgettingGenerator:
        return cls(config.run_id)

    def generate(self, prompts, sampling, seed, progress=None):
        from rsample.workers.runtime.run_state import load_run, save_run

        self.calls += 1
        if self.calls == 1:
            client = redis.Redis.from_url(os.environ["RSAMPLE_REDIS_URL"])
            config = load_run(client, self.run_id)
            client.flushall()
            save_run(client, config)
            if os.environ.get("RSAMPLE_TEST_THEN") == "fault":
                raise RuntimeError(CUDA_FAULT)
        return super().generate(prompts, sampling, seed)


class SlowClosingGenerator(EchoGenerator):
    """Echo, whose shutdown takes 3 s, as a vLLM engine's does."""

    @classmethod
    def from_run(cls, config) -> SlowClosingGenerator:
        return cls()

    def close(self) -> None:
        import time

        time.sleep(3)
        print("closed", flush=True)


if __name__ == "__main__":
    from rsample.producer.cli import main
    from rsample.workers.backends import registry

    registry.GENERATION_BACKENDS["echo"] = f"{__name__}:{os.environ.get('RSAMPLE_TEST_BACKEND', 'BreakingGenerator')}"
    sys.modules.setdefault("breaking_backends", sys.modules[__name__])
    main(sys.argv[1:])
