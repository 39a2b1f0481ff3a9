"""The coordinator of a run: the one process that feeds prompts in and writes results out.

It owns both ends of the pipeline, so it can prove exactly-once: a row is handed out only if the
ledger has no outcome for it, and the ledger takes each row's outcome once. It also sweeps jobs
abandoned by dead workers back into their queues, and re-creates the run if Redis lost it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis
from rq.registry import StartedJobRegistry

from rsample.producer.dataset import count_rows, fingerprint, iter_rows, read_order
from rsample.producer.driver.collector import Collector
from rsample.producer.driver.ledger import Ledger, output_header
from rsample.producer.driver.run_lock import RunLock
from rsample.producer.driver.summary import Summary, summarize
from rsample.producer.feeder import Feeder
from rsample.producer.prompts import record_of, row_prompt_id
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.messages import Outcome, commonest_reasons
from rsample.workers.runtime.connection import eviction_policy
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.pace import record_sample, take_sample
from rsample.workers.runtime.queues import generation_job_id, make_queue, worker_processes
from rsample.workers.runtime.redis_clock import redis_now
from rsample.workers.runtime.run_state import read_stats, save_run, start_fresh_batch_ids
from rsample.workers.runtime.safe_job import SafeJob

log = logging.getLogger(__name__)

OUTCOMES_PUBLISH_SECONDS = 1.0
"""The outcome counts go to `rsample status` at most this often (and at the end): publishing them costs as much as
there are skip reasons, which may be one per row."""


def warn_if_made_again(config: RunConfig, out) -> None:
    """A run made anew where its output began earlier (`rsample enqueue` again after Redis lost it; `resume` and
    `aggregate` re-create it from its files instead): the date its chat templates show changes from here on."""
    made = output_header(Path(out)).get("created_at")
    if isinstance(made, (int, float)) and made > 0 and made != config.created_at:
        def day(moment: float) -> str:
            return time.strftime("%Y-%m-%d", time.gmtime(moment))

        log.warning("run %s in this Redis was made on %s, its output %s on %s: chat templates that show the date render "
                    "the rows still to come with the first (`rsample forget` it, then `rsample resume --out %s` makes it "
                    "again from its files)", config.run_id, day(config.created_at), out, day(made), out)


class Coordinator:
    def __init__(self, client: redis.Redis, config: RunConfig, out: str | Path, scores_out: str | Path | None = None,
                 overwrite: bool = False, sft_out: str | Path | None = None, retry_failed: bool = False):
        """`retry_failed`: rows that the output files record as skipped because their work failed are produced again."""
        self.client = client
        self.config = config
        self.keys = RunKeys(config.run_id)
        self._rewind_pending = False
        """Rows the output lacks wait for the work in flight, then the run is fed again from its first row."""
        self._outcomes_due, self._outcomes_published_at = False, 0.0
        self.lock = RunLock(client, self.keys.coordinator_lock, config.run_id).acquire()  # kept alive from here on
        try:  # nothing between: a stop signal there would leave the lock held until it lapses
            self.ledger = Ledger(out, scores_out, config.run_id, overwrite, sft_out, (config.data.dataset, fingerprint(config.data), read_order(config.data)),
                                 config.output_settings(), created_at=config.created_at)
            if overwrite and self.ledger.rows and (row := self._first_changed_row()) is not None:
                log.warning("row %d of the dataset is not the row run %s wrote an outcome for (it was edited since); --overwrite: "
                            "the run starts over", row, config.run_id)
                self.ledger.close()
                self.ledger = Ledger(out, scores_out, config.run_id, overwrite, sft_out, (config.data.dataset, fingerprint(config.data), read_order(config.data)),
                                     config.output_settings(), start_over=True, created_at=config.created_at)
            warn_if_made_again(config, out)
            self.collector = Collector(client, config, self.ledger, before_commit=self.lock.refresh)
            if retry_failed:  # a failure committed but left in the stream by a coordinator that died must not settle a retried row
                self.collector.drain()
            retried = self.ledger.retry_failed() if retry_failed else []
            self.feeder = Feeder(client, config, self.ledger)
            self._take_appended_rows()
            self._feed_what_the_output_lacks(retried)
            # a resume's bar starts where its files are; its rates count this session's rows only (`rsample status`)
            found = read_stats(client, config.run_id)
            client.hset(self.keys.stats, mapping={
                "rows_written": len(self.ledger.rows), "rows_restored": len(self.ledger.rows), "session_started_at": time.time(),
                "session_generated_before": int(found.get("rows_generated") - found.get("rows_replayed")),  # a shared Redis's
                "session_scored_before": int(found.get("rows_scored") - found.get("rows_replayed")),         # earlier sessions
                "session_completions_before": int(found.get("completions_generated")),
                "session_tokens_before": int(found.get("tokens_generated")),
            })
            self._resumed = bool(self.ledger.rows) or found.get("completions_generated") > 0  # an earlier session's work
            self._baseline = {name: found.get(name) for name in self._session_counters()}
            """The counters as this session found them: its summary counts what it added (a shared Redis keeps earlier ones)."""
            self._publish_outcomes()
        except BaseException:
            if getattr(self, "ledger", None) is not None:
                self.ledger.close()  # and its hold on the output: a caller that tries again in this process must find it free
            self.lock.release()
            raise
        self._last_step_wall: float | None = None
        self._postponed_since: float | None = None
        self._sweep_not_before = 0.0
        """After an outage of Redis that the coordinator itself waited through, when the sweep may requeue again."""
        self._unserved_since: float | None = None
        self._unserved_said: float | None = None
        self._counters_lost = False
        """Redis lost the run's counters this session: the summary's completions are those counted since."""
        if policy := eviction_policy(client):
            log.warning("Redis evicts keys when it is full (maxmemory-policy %s): it may drop run %s's queues and counters, which "
                        "rsample then re-creates and feeds again; set maxmemory-policy noeviction", policy, config.run_id)
        self._last_sweep = 0.0
        self._last_pace = 0.0
        self._idle_since: float | None = None
        self._missing_since: dict[str, float] = {}
        self.started_at = time.time()

    def _first_changed_row(self) -> int | None:
        """The first row with an outcome whose prompt is not the one it had (`Ledger.check_row`, which the feeder applies
        as it goes; with --overwrite, looked for before: starting over is only possible before any row is fed)."""
        for index, row in iter_rows(self.config.data):
            if index in self.ledger.rows and self.ledger.changed(index, row_prompt_id(record_of(self.config, index, row))):
                return index
        return None

    def _take_appended_rows(self) -> None:
        """Rows appended to a local dataset after this Redis fed its last row (the ledger accepts them: they move no
        row) are the run's too, as they are for a resume on a fresh Redis, which counts the rows again."""
        if not self.feeder.exhausted or fingerprint(self.config.data) is None:
            return
        total = int(self.client.hget(self.keys.stats, "rows_total") or 0)
        now = count_rows(self.config.data)
        if now <= total:
            return
        log.warning("run %s: %d rows were appended to its dataset since it was fed: feeding them", self.config.run_id, now - total)
        self._unfinish()
        with self.client.pipeline() as pipe:
            pipe.hdel(self.keys.stats, "feed_done")
            pipe.hset(self.keys.stats, "rows_total", now)
            pipe.execute()
        self.feeder.exhausted = False

    def _feed_what_the_output_lacks(self, retried: list[Outcome]) -> None:
        """Rows this Redis fed (they are behind its feed cursor) that the output files lack: rows `--retry-failed` opened
        again, or every row of a run whose output started over (`--overwrite`, another `--out`). With nothing in flight
        (by the counters, and no job or result in the queues: a Redis fed again may count a batch's return twice), they
        exist nowhere: the feeder starts again from the first row, skipping what is written, a window at a time.
        With work in flight (a coordinator restarted mid-run), the retried rows are fed again at once, and the others
        from the first row once that work is done (`recover_lost_work`), a window at a time."""
        if retried:
            reasons = Counter(outcome.reason for outcome in retried)
            log.warning("run %s: retrying %d rows skipped because their work failed (%s)", self.config.run_id, len(retried),
                        "; ".join(f"{reason}: {count}" for reason, count in reasons.most_common(3)) + ("; ..." if len(reasons) > 3 else ""))
        lacking = len(self.feeder.handed) + len(self.feeder.lost_outcomes())  # prompts, and the feeder's own skips and duplicates
        if not lacking:
            return
        self._unfinish()
        others = lacking - len(retried)
        if self.feeder.in_flight() > 0 or not self.pipeline_is_idle():  # counters that overcount returns still see the jobs
            self.feeder.refeed([self.feeder.handed[o.row_index] for o in retried if o.row_index in self.feeder.handed])
            if others > 0:  # fed again through the window once the work in flight is done (`recover_lost_work`)
                self._rewind_pending = True
                log.info("run %s: %d rows this Redis fed have no outcome in %s yet: those in flight are written as they come "
                         "back, and any still missing then (files that started over, or others) are fed again", self.config.run_id,
                         others, self.ledger.out)
            return
        if others > 0:
            log.warning("run %s: %d rows this Redis fed are not in %s (its files started over, or are others): feeding them again",
                        self.config.run_id, others, self.ledger.out)
        self._rewind()

    def _rewind(self) -> None:
        """Feeds the run again from its first row, a window at a time, skipping the rows the output holds."""
        self._rewind_pending = False
        with self.client.pipeline() as pipe:
            pipe.hdel(self.keys.stats, "feed_done")
            # the feeder counts the rows already written as it passes them again, as after a Redis that lost the run
            pipe.hset(self.keys.stats, mapping={"feed_cursor": 0, "rows_generated": 0, "rows_scored": 0, "rows_replayed": 0,
                                                "session_generated_before": 0, "session_scored_before": 0})
            pipe.hincrby(self.keys.stats, "feed_pass", 1)  # new batch ids: the jobs of the earlier pass may linger in RQ's registries
            pipe.execute()
        self.feeder.restart()

    def _unfinish(self) -> None:
        """A finished run has work again: its keys no longer expire (`expire_run`), and it no longer counts as finished."""
        with self.client.pipeline() as pipe:
            for key in self.keys.kept_after_finish:
                pipe.persist(key)
            pipe.hdel(self.keys.stats, "finished_at")
            pipe.execute()

    def is_complete(self) -> bool:
        total = self.client.hget(self.keys.stats, "rows_total")
        return self.feeder.exhausted and total is not None and len(self.ledger.rows) >= int(total)

    def ensure_run(self) -> None:
        """A Redis restarted without persistence forgets the run: put it back and re-feed what is not written."""
        if self.client.exists(self.keys.config):
            return
        policy = eviction_policy(self.client)
        cause = f"evicted under maxmemory-policy {policy}? set noeviction" if policy else "restarted without persistence?"
        log.warning("Redis lost run %s (%s): re-creating it and re-feeding the rows not yet written", self.config.run_id, cause)
        # Counters written since the restart are not the run's: a feeder or worker write that reached the new, empty
        # Redis first (a feed cursor at the end, "feed done") would stop the rows lost in flight from being fed again.
        # Start them afresh: the ledger alone says what is written, and it ignores whatever is delivered twice.
        self.client.delete(self.keys.stats)
        start_fresh_batch_ids(self.client, self.config.run_id)
        self._baseline = {}  # this session's counts: those counted from now on
        self._counters_lost = True
        save_run(self.client, self.config, rows_total=count_rows(self.config.data))  # what `rsample run` and status go by
        self.client.hset(self.keys.stats, "counters_lost_at", time.time())  # `rsample status` says what its counts count
        self.feeder.restart()
        self.collector.cursor = "0"

    def sweep(self) -> bool:
        """Requeues (or fails, when out of retries) jobs whose worker stopped sending heartbeats; False where it waits.
        One cutoff for every queue, taken first, from Redis's clock, the one the workers' claims are scored on: an
        outage that begins during the sweep must not let the later queues judge heartbeats that could not reach Redis;
        and one that the clock's own command waited through postpones the sweep, as one that a step waited through."""
        asked = time.monotonic()
        cutoff = redis_now(self.client)
        self._note_own_outage(asked)
        if time.monotonic() < self._sweep_not_before:
            return False
        for name in self.keys.all_queues(len(self.config.reward_models)):
            queue = make_queue(self.client, name)
            StartedJobRegistry(queue=queue, job_class=SafeJob).cleanup(timestamp=cutoff)
        return True

    def pipeline_is_idle(self) -> bool:
        """No job queued, running or waiting for a retry, and nothing ready to write: nobody can finish anything."""
        if self.client.xlen(self.keys.ready):
            return False
        for name in self.keys.all_queues(len(self.config.reward_models)):
            queue = make_queue(self.client, name)
            # counted as they are (rq's `.count` sweeps the registry: only `sweep`, with its outage grace, may requeue)
            if queue.count or queue.started_job_registry.get_job_count(cleanup=False) or queue.scheduled_job_registry.get_job_count(cleanup=False):
                return False
        return True

    def grace_seconds(self) -> float:
        """How long work may seem to be nowhere before it counts as lost: longer than a worker may run unseen."""
        return max(2 * self.config.jobs.heartbeat_ttl, 2 * defaults.REAPER_INTERVAL)

    def recover_lost_batches(self) -> None:
        """Feeds again, within bounded time, the batches of which Redis holds neither the generation job nor the
        generated payload (one of them exists from the moment the job is enqueued until its rows are written):
        a Redis that came back older than it was, or a failover to a replica that lagged, lost them."""
        batches = self.feeder.open_batches()
        if not batches:
            self._missing_since.clear()
            return
        ids = list(batches)
        with self.client.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.exists(SafeJob.key_for(generation_job_id(self.config.run_id, batch_id)), self.keys.batch(batch_id))
            present = pipe.execute()
        now = time.monotonic()
        missing = {batch_id for batch_id, count in zip(ids, present) if not count}
        self._missing_since = {batch_id: self._missing_since.get(batch_id, now) for batch_id in missing}
        lost = [batch_id for batch_id, since in self._missing_since.items() if now - since >= self.grace_seconds()]
        if not lost:
            return
        rows = {row for batch_id in lost for row in batches[batch_id] if row not in self.ledger.rows}
        records = [record for record in self.feeder.unsettled() if record.row_index in rows]
        for batch_id in lost:
            del self.feeder.batches[batch_id]
            del self._missing_since[batch_id]
        log.warning("run %s: batches %s exist nowhere in Redis any more (it came back older than it was?): feeding their %d "
                    "prompts again", self.config.run_id, ", ".join(sorted(lost)), len(records))
        self.feeder.refeed(records, written_off=sum(len(batches[b]) for b in lost))

    def recover_lost_work(self) -> None:
        """Feeds again the prompts that are handed out but exist nowhere any more, and sets the window right.

        A Redis that comes back older than it was (restarted from an earlier snapshot, or a replica that lagged
        behind a failover) has lost the jobs and results written since, and its counters are those of then: the
        run would wait forever for prompts that no job holds, or find its window full of prompts long written. Once
        the whole pipeline has been idle for longer than a worker may run unseen (two heartbeat TTLs), nothing is in
        flight, whatever the counters say: they are set right, and the prompts not yet written are fed again.
        Should a lost job still finish after all, the ledger keeps one result.
        """
        lost, lost_outcomes = self.feeder.unsettled(), self.feeder.lost_outcomes()
        nothing_missing = not lost and not lost_outcomes and not self._rewind_pending
        if (nothing_missing and self.feeder.in_flight() == 0) or not self.pipeline_is_idle():
            self._idle_since = None
            return
        if self._rewind_pending and self.feeder.in_flight() <= 0:  # the work in flight is done: the rows the output lacks
            self._rewind()
            self._idle_since = None
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
            return
        if now - self._idle_since < self.grace_seconds():
            return
        enqueued = int(self.client.hget(self.keys.stats, "prompts_enqueued") or 0)
        self.client.hset(self.keys.stats, "prompts_returned", enqueued)  # idle: nothing is in flight
        if self._rewind_pending:  # every row the output lacks, through the window (not all at once)
            self._rewind()
        elif lost or lost_outcomes:
            if lost:
                log.warning("run %s: %d prompts were handed out but exist nowhere in Redis any more (it came back older than it "
                            "was?): feeding them again", self.config.run_id, len(lost))
                self.feeder.refeed(lost)
            if lost_outcomes:
                log.warning("run %s: %d rows skipped as bad or duplicate have no outcome written, and none is on its way (Redis "
                            "came back older than it was?): settling them again", self.config.run_id, len(lost_outcomes))
                self.feeder.settle_again(lost_outcomes)
        else:
            log.warning("run %s: nothing is in flight but the counters said otherwise (Redis came back older?): set right",
                        self.config.run_id)
        self._idle_since = None

    def step(self) -> None:
        started = time.monotonic()
        self.lock.refresh()
        self.ensure_run()
        self.feeder.top_up()
        if self.collector.step():
            self._outcomes_due = True
        if self._outcomes_due and time.monotonic() - self._outcomes_published_at >= OUTCOMES_PUBLISH_SECONDS:
            self._publish_outcomes()
        self._note_own_outage(started)
        if time.monotonic() < self._sweep_not_before:
            pass
        elif time.monotonic() - self._last_sweep > min(defaults.REAPER_INTERVAL, self.config.jobs.heartbeat_ttl / 2):
            if self.sweep():
                self.recover_lost_batches()
                self.recover_lost_work()
                self._last_sweep = time.monotonic()
        if time.monotonic() - self._last_pace >= defaults.PACE_INTERVAL:
            record_sample(self.client, self.config.run_id, take_sample(self.client, self.config.run_id))
            self._last_pace = time.monotonic()
            self._say_unserved()

    def _note_own_outage(self, step_started: float) -> None:
        """A step that took long (its commands waited for Redis: paused, restarted, unreachable), or a long gap since the
        last one (this process was suspended), means the workers' heartbeats may not have reached Redis either: one that
        looks stopped proves no worker dead. The sweep then waits one heartbeat TTL, for live workers to beat again,
        rather than requeue their jobs and spend a retry of each; never for more than two TTLs in a row, so that a
        flapping Redis cannot hold back the jobs of workers that did die."""
        now, wall = time.monotonic(), time.time()
        ttl = self.config.jobs.heartbeat_ttl
        gap = max(now - step_started, wall - self._last_step_wall if self._last_step_wall else 0.0)
        self._last_step_wall = wall
        if gap < max(ttl / 4, defaults.AGGREGATOR_BLOCK_MS / 1000 + 2.0):  # a step's own wait on the ready stream is no outage
            if now >= self._sweep_not_before:
                self._postponed_since = None
            return
        self._postponed_since = self._postponed_since or now
        self._sweep_not_before = min(now + ttl, self._postponed_since + 2 * ttl)
        log.info("run %s: a step took %.0f s (Redis out of reach?): jobs whose heartbeat stopped are requeued from %.0f s on",
                 self.config.run_id, gap, self._sweep_not_before - now)

    def _say_unserved(self) -> None:
        """Jobs that wait with no worker to take them: said when first seen and every few minutes while it lasts, so that
        a coordinator started before its workers (or whose workers died) does not wait in silence."""
        waiting = {}
        for name in self.keys.all_queues(len(self.config.reward_models)):
            queue = make_queue(self.client, name)
            if queue.count and not worker_processes(queue):
                waiting[name] = queue.count
        if not waiting:
            self._unserved_since = self._unserved_said = None
            return
        now = time.monotonic()
        self._unserved_since = self._unserved_since or now
        if now - self._unserved_since >= defaults.UNSERVED_GRACE and (
                self._unserved_said is None or now - self._unserved_said >= defaults.UNSERVED_REPEAT):
            queues = ", ".join(f"{name} ({count} jobs)" for name, count in waiting.items())
            log.warning("run %s: no worker has served %s for %.0f s (a worker registers once its models are loaded): start "
                        "workers for it (`rsample workers`, or `rsample worker ROLE --run %s`)", self.config.run_id, queues,
                        now - self._unserved_since, self.config.run_id)
            self._unserved_said = now

    def _publish_outcomes(self) -> None:
        """Outcome counts for `rsample status`, which runs elsewhere and has no ledger: the commonest skip reasons (there
        may be one per row) and the count of rows whose work failed, which `--retry-failed` would try again."""
        outcomes, reasons = self.ledger.counts()
        self.client.hset(self.keys.stats, mapping={"outcomes": json.dumps(outcomes), "skip_reasons": json.dumps(commonest_reasons(reasons)),
                                                   "skipped_failed": self.ledger.failed_rows})
        self._outcomes_due, self._outcomes_published_at = False, time.monotonic()

    def _session_counters(self) -> list[str]:
        return ["completions_generated", "tokens_generated",
                *(f"completions_{kind}:{index}" for index in range(len(self.config.reward_models)) for kind in ("scored", "unscored"))]

    def summary(self) -> Summary:
        outcomes, reasons = self.ledger.counts()
        stats = read_stats(self.client, self.config.run_id)
        added = lambda name: max(0, int(stats.get(name) - self._baseline.get(name, 0.0)))  # noqa: E731
        unscored = {name: (added(f"completions_unscored:{index}"), added(f"completions_scored:{index}"))
                    for index, name in enumerate(self.config.score_names)}
        summary = summarize(outcomes, reasons, added("completions_generated"), added("tokens_generated"), time.time() - self.started_at,
                            self.ledger.sft_written if self.ledger.sft_out else None, unscored)
        summary = dataclasses.replace(summary, resumed=self._resumed)
        return dataclasses.replace(summary, counted_since_loss=True) if self._counters_lost else summary

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
            self.collector.publish_live()
            self.client.hsetnx(self.keys.stats, "finished_at", time.time())  # `rsample status`: how long the run took
        except BaseException as exc:
            if not isinstance(exc, redis.RedisError):  # stopped (Ctrl-C, SIGTERM, an abort): Redis is there to be told
                self._publish_what_was_written()
            raise
        finally:
            self.close()

    def _publish_what_was_written(self, timeout: float = defaults.LOCK_RELEASE_SECONDS) -> None:
        """A coordinator stopped before the end publishes what it wrote since its last publication, so that `rsample status`
        does not show numbers up to 10 s older than the files until another coordinator starts. Not once another
        coordinator took over (the numbers are its own now); at most `timeout` seconds, as the lock's release: the client
        waits for a Redis that went away, and a stopped coordinator must still exit."""
        if self.lock.lost:
            return

        def publish() -> None:
            try:
                self._publish_outcomes()
                if self.collector.live.added and not self.collector.live.reading():  # never wait for a resume's counting
                    self.collector.publish_live()
            except Exception as exc:
                log.debug("run %s: the last numbers were not published: %s", self.config.run_id, exc)

        publishing = threading.Thread(target=publish, name="rsample-last-numbers", daemon=True)
        publishing.start()
        publishing.join(timeout)

    def close(self) -> None:
        try:
            self.ledger.close()
        finally:  # another coordinator need not wait out the lock
            self.lock.release()
