"""Names of every Redis key and RQ queue of a run, so that runs sharing one Redis never touch each other."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rsample.workers.common.defaults import KEY_PREFIX

RUNS_INDEX = f"{KEY_PREFIX}:runs"
"""Sorted set of run ids by creation time: lets `rsample worker` attach to the latest run."""


@dataclass(frozen=True)
class RunKeys:
    run_id: str

    @property
    def _base(self) -> str:
        return f"{KEY_PREFIX}:run:{self.run_id}"

    @property
    def config(self) -> str:
        return f"{self._base}:config"

    @property
    def stats(self) -> str:
        """Hash of counters (rows generated, completions, tokens, feed cursor...)."""
        return f"{self._base}:stats"

    @property
    def ready(self) -> str:
        """Stream of finished work for the coordinator: scored batches, failed batches, rows the feeder settled."""
        return f"{self._base}:ready"

    @property
    def live(self) -> str:
        """Hash of running jobs' progress so far (batch id -> JSON), so that progress moves inside long jobs."""
        return f"{self._base}:live"

    @property
    def pace(self) -> str:
        """List of the coordinator's samples of the counters, newest first: the recent pace `rsample status` shows."""
        return f"{self._base}:pace"

    @property
    def kept_after_finish(self) -> tuple[str, ...]:
        """What a finished run keeps for `rsample status`, for `RUN_TTL` (`run_state.expire_run`): everything else of
        it is gone by then. A key left out here outlives the run forever."""
        return (self.config, self.stats, self.ready, self.pace, self.unprocessable)

    @property
    def coordinator_lock(self) -> str:
        """Held by the one process that feeds prompts and writes the output of the run."""
        return f"{self._base}:coordinator"

    @property
    def unprocessable(self) -> str:
        """List of ready messages the coordinator could not process, each with its error: set aside, never retried."""
        return f"{self._base}:unprocessable"

    def batch(self, batch_id: str) -> str:
        """JSON of a generated batch, deleted once written."""
        return f"{self._base}:batch:{batch_id}"

    def scores(self, batch_id: str) -> str:
        """Hash of reward model index -> JSON scores of a batch, deleted once written."""
        return f"{self._base}:scores:{batch_id}"

    def all_run_keys_pattern(self) -> str:
        return f"{self._base}:*"

    @property
    def queue_prefix(self) -> str:
        return f"{KEY_PREFIX}-{self.run_id}-"

    @property
    def generate_queue(self) -> str:
        return f"{self.queue_prefix}generate"

    def score_queue(self, model_index: int) -> str:
        return f"{self.queue_prefix}score-{model_index}"

    def all_queues(self, num_reward_models: int) -> list[str]:
        return [self.generate_queue] + [self.score_queue(i) for i in range(num_reward_models)]

    def owns_queue(self, name: str) -> bool:
        """Whether a queue's name is one of this run's (another run's name may begin with this one's: `a` and `a-generate`)."""
        return name == self.generate_queue or re.fullmatch(re.escape(self.queue_prefix) + r"score-[0-9]+", name) is not None
