"""`python tests/skewed_clock.py worker ...` runs a real `rsample` command on a machine whose clock is off by
RSAMPLE_TEST_SKEW seconds (negative: behind), with an echo policy that takes RSAMPLE_TEST_SLOW seconds per batch, so
that its jobs run across the coordinator's sweeps."""

from __future__ import annotations

import datetime
import os
import sys
import time

from rsample.workers.backends.zero_cost import EchoGenerator

SKEW = float(os.environ.get("RSAMPLE_TEST_SKEW", "0"))


class SlowEchoGenerator(EchoGenerator):
    @classmethod
    def from_run(cls, config) -> SlowEchoGenerator:
        return cls()

    def generate(self, prompts, sampling, seed, progress=None):
        time.sleep(float(os.environ.get("RSAMPLE_TEST_SLOW", "0")))
        return super().generate(prompts, sampling, seed)


def skew_the_clock() -> None:
    import rq.executions
    import rq.registry
    import rq.utils

    true_time = time.time
    time.time = lambda: true_time() + SKEW
    true_datetime = datetime.datetime

    def now() -> datetime.datetime:
        return true_datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=SKEW)

    def current_timestamp() -> int:
        return int(now().timestamp())

    for module in (rq.utils, rq.registry, rq.executions):
        for name, value in (("now", now), ("current_timestamp", current_timestamp)):
            if hasattr(module, name):
                setattr(module, name, value)


if __name__ == "__main__":
    from rsample.producer.cli import main
    from rsample.workers.backends import registry

    skew_the_clock()
    registry.GENERATION_BACKENDS["echo"] = f"{__name__}:SlowEchoGenerator"
    sys.modules.setdefault("skewed_clock", sys.modules[__name__])
    main(sys.argv[1:])
