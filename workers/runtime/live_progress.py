"""Progress inside running jobs: a job of 16 prompts x 256 tokens can take a minute, and counters that move only
when it ends leave progress bars at 0% and then jump to 100%.

A generation backend reports as it goes (the share of its call done, tokens so far); the job publishes that to
the run's `live` hash at most once a second, under its batch id, and removes it in the same transaction that
adds the job's final counts, so that readers never count a job twice. An entry its worker stopped refreshing
(the worker died) is ignored by readers and later removed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from rsample.workers.common import defaults
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.run_state import RunStats


class LiveReporter:
    """The callback a job hands its backend: `reporter(share_done, tokens_so_far)`, cheap enough to call every step."""

    def __init__(self, client: redis.Redis, run_id: str, batch_id: str, stage: str, rows: int,
                 interval: float = defaults.LIVE_PROGRESS_INTERVAL):
        self.client, self.key, self.batch_id = client, RunKeys(run_id).live, batch_id
        self.stage, self.rows, self.interval = stage, rows, interval
        self._last = 0.0

    def __call__(self, share: float, tokens: int) -> None:
        now = time.time()
        if now - self._last < self.interval:
            return
        self._last = now
        entry = {"stage": self.stage, "rows": self.rows, "share": min(1.0, max(0.0, share)), "tokens": tokens, "at": now}
        try:
            self.client.hset(self.key, self.batch_id, json.dumps(entry))
        except redis.RedisError:  # progress is a courtesy: the job's own writes will report a lost Redis
            pass


@dataclass(frozen=True)
class LiveShare:
    rows: float
    """Rows' worth of work done inside running jobs (a job half done over 16 prompts counts 8)."""
    tokens: int
    jobs: int


def read_progress(client: redis.Redis, run_id: str, stale_after: float = defaults.LIVE_PROGRESS_STALE) -> tuple[RunStats, LiveShare]:
    """The run's counters and what its running generation jobs have done so far, read in one transaction (a job
    moves from one to the other atomically); live entries not refreshed for `stale_after` s are dropped."""
    keys = RunKeys(run_id)
    with client.pipeline() as pipe:
        pipe.hgetall(keys.stats)
        pipe.hgetall(keys.live)
        raw_stats, raw_live = pipe.execute()
    rows, tokens, jobs, stale = 0.0, 0, 0, []
    now = time.time()
    for field, raw in raw_live.items():
        entry = json.loads(raw)
        if now - entry["at"] > stale_after:
            stale.append(field)
        elif entry["stage"] == "generate":
            rows += entry["rows"] * entry["share"]
            tokens += entry["tokens"]
            jobs += 1
    if stale:
        client.hdel(keys.live, *stale)
    return RunStats({k.decode(): v.decode() for k, v in raw_stats.items()}), LiveShare(rows, tokens, jobs)
