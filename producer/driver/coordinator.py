"""The coordinator of a run: the one process that feeds prompts in and writes results out.

It owns both ends of the pipeline, so it can prove exactly-once: a row is handed out only if the
ledger has no outcome for it, and the ledger takes each row's outcome once. It also sweeps jobs
abandoned by dead workers back into their queues, and re-creates the run if Redis lost it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from rq.registry import StartedJobRegistry

from rsample.producer.driver.collector import Collector
from rsample.producer.driver.ledger import Ledger
from rsample.producer.driver.summary import Summary, summarize
from rsample.producer.feeder import Feeder
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.run_state import read_stats, save_run
from rsample.workers.runtime.safe_job import SafeJob

log = logging.getLogger(__name__)

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Coordinator:
    def __init__(self, client: redis.Redis, config: RunConfig, out: str | Path, scores_out: str | Path | None = None):
        self.client = client
        self.config = config
        self.keys = RunKeys(config.run_id)
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._take_lock()
        self.ledger = Ledger(out, scores_out, config.run_id)
        self.feeder = Feeder(client, config, self.ledger)
        self.collector = Collector(client, config, self.ledger)
        self._last_sweep = 0.0
        self.started_at = time.time()
        stats = read_stats(client, config.run_id)
        self._baseline = (stats.get("completions_generated"), stats.get("tokens_generated"))

    def _take_lock(self) -> None:
        """One coordinator per run. A dead one's lock is taken over at once on its own host, else when it expires."""
        deadline = time.monotonic() + defaults.COORDINATOR_LOCK_SECONDS + 5
        while not self.client.set(self.keys.coordinator_lock, self._token, nx=True, ex=defaults.COORDINATOR_LOCK_SECONDS):
            holder = (self.client.get(self.keys.coordinator_lock) or b"").decode()
            host, _, rest = holder.partition(":")
            pid = rest.partition(":")[0]
            if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
                log.warning("taking over run %s from coordinator process %s, which is gone", self.config.run_id, pid)
                self.client.set(self.keys.coordinator_lock, self._token, ex=defaults.COORDINATOR_LOCK_SECONDS)
                return
            if time.monotonic() > deadline:
                raise RsampleError(
                    f"run {self.config.run_id} already has a live coordinator ({holder.rsplit(':', 1)[0]}): "
                    "one `rsample run` or `rsample aggregate` per run"
                )
            time.sleep(1)

    def _hold_lock(self) -> None:
        """Refreshes the lock; a Redis that forgot it (restart without persistence) gets it back."""
        current = self.client.get(self.keys.coordinator_lock)
        if current is None:
            self.client.set(self.keys.coordinator_lock, self._token, nx=True, ex=defaults.COORDINATOR_LOCK_SECONDS)
        elif current.decode() != self._token:
            raise RsampleError(f"another coordinator ({current.decode().rsplit(':', 1)[0]}) took over run {self.config.run_id}: stopping")
        else:
            self.client.expire(self.keys.coordinator_lock, defaults.COORDINATOR_LOCK_SECONDS)

    def is_complete(self) -> bool:
        total = self.client.hget(self.keys.stats, "rows_total")
        return self.feeder.exhausted and total is not None and len(self.ledger.rows) >= int(total)

    def ensure_run(self) -> None:
        """A Redis restarted without persistence forgets the run: put it back and re-feed what is not written."""
        if self.client.exists(self.keys.config):
            return
        log.warning("Redis lost run %s (restarted without persistence?): re-creating it and re-feeding the rows not yet written", self.config.run_id)
        # Counters written since the restart are not the run's: a feeder or worker write that reached the new, empty
        # Redis first (a feed cursor at the end, "feed done") would stop the rows lost in flight from being fed again.
        # Start them afresh: the ledger alone says what is written, and it ignores whatever is delivered twice.
        self.client.delete(self.keys.stats)
        save_run(self.client, self.config)
        self.feeder.restart()
        self.collector.cursor = "0"

    def sweep(self) -> None:
        """Requeues (or fails, when out of retries) jobs whose worker stopped sending heartbeats."""
        for name in self.keys.all_queues(len(self.config.reward_models)):
            queue = make_queue(self.client, name)
            StartedJobRegistry(queue=queue, job_class=SafeJob).cleanup()

    def step(self) -> None:
        self._hold_lock()
        self.ensure_run()
        self.feeder.top_up()
        if self.collector.step():
            self._publish_outcomes()
        if time.monotonic() - self._last_sweep > min(defaults.REAPER_INTERVAL, self.config.jobs.heartbeat_ttl / 2):
            self.sweep()
            self._last_sweep = time.monotonic()

    def _publish_outcomes(self) -> None:
        """Outcome counts for `rsample status`, which runs elsewhere and has no ledger."""
        outcomes, reasons = self.ledger.counts()
        self.client.hset(self.keys.stats, mapping={"outcomes": json.dumps(outcomes), "skip_reasons": json.dumps(reasons)})

    def summary(self) -> Summary:
        outcomes, reasons = self.ledger.counts()
        stats = read_stats(self.client, self.config.run_id)
        completions = max(0, int(stats.get("completions_generated") - self._baseline[0]))
        tokens = max(0, int(stats.get("tokens_generated") - self._baseline[1]))
        return summarize(outcomes, reasons, completions, tokens, time.time() - self.started_at)

    def run(self, on_progress: Callable[[], None] | None = None, check: Callable[[], None] | None = None) -> None:
        """Feeds and writes until every row of the selection has its outcome; `check` may raise to abort."""
        try:
            while not self.is_complete():
                self.step()
                if on_progress:
                    on_progress()
                if check:
                    check()
            self._publish_outcomes()
        finally:
            self.close()

    def close(self) -> None:
        self.ledger.close()
        try:
            if self.client.get(self.keys.coordinator_lock) == self._token.encode():
                self.client.delete(self.keys.coordinator_lock)
        except redis.RedisError:
            pass
