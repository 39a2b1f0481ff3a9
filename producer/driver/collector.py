"""The collector: turns finished work from the ready stream into output rows and ledger outcomes.

Every message is handled idempotently: the ledger writes a row's outcome once, whatever is delivered
twice. A handled message is deleted from the stream together with its batch's payloads, so Redis
keeps only what is still in flight.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import redis

from rsample.producer.driver.ledger import Ledger
from rsample.producer.driver.skip_log import SkipLog
from rsample.producer.report.live import LiveNumbers
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import first_line
from rsample.workers.common.messages import DUPLICATE, SKIPPED, UNPROCESSABLE, GeneratedBatch, Outcome, is_failure_reason
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import enqueue_scoring, score_job_id
from rsample.workers.runtime.safe_job import SafeJob
from rsample.workers.stages.aggregate import BatchOutcome, aggregate_batch

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, client: redis.Redis, config: RunConfig, ledger: Ledger, before_commit: Callable[[], None] = lambda: None):
        """`before_commit` runs right before each write to the files and may raise to stop it (the run lock's fence)."""
        self.client = client
        self.config = config
        self.ledger = ledger
        self.before_commit = before_commit
        self.keys = RunKeys(config.run_id)
        self.cursor = "0"
        self.live = LiveNumbers(config.reasoning_end)
        """The report's key numbers over the rows written, published for `rsample status`."""
        self.live.start_from(ledger.out, ledger.scores_out)
        self._warned_of_thinking = False
        self.skips = SkipLog(log)

    def step(self, block_ms: int | None = defaults.AGGREGATOR_BLOCK_MS) -> int:
        """Handles what became ready since the last step; returns the number of rows newly settled.

        Everything read in one step is committed to the files in one go (one fsync per file), and only
        then deleted from Redis: a crash in between leaves it in the stream, and the ledger ignores repeats.
        """
        return self._step(block_ms)[1]

    def drain(self) -> None:
        """Handles everything the stream holds now, without waiting for more: results a coordinator committed but died
        before deleting from the stream are then deleted, and those finished while no coordinator ran are written."""
        while self._step(block_ms=None)[0]:
            pass

    def _step(self, block_ms: int | None) -> tuple[int, int]:
        """(messages read, rows newly settled); `block_ms` None: no wait."""
        answer = self.client.xread({self.keys.ready: self.cursor}, count=defaults.AGGREGATOR_READ_COUNT, block=block_ms)
        entries = [(entry_id, {k.decode(): v.decode() for k, v in raw.items()}) for _, stream in answer or [] for entry_id, raw in stream]
        if not entries:
            return 0, 0
        self.cursor = entries[-1][0]
        payloads = self._fetch_payloads([fields["batch_id"] for _, fields in entries if "batch_id" in fields])
        deliveries, cleanup, returned, seen, said = [], [], 0, set(), set()
        for entry_id, fields in entries:
            if "batch_id" in fields and fields["batch_id"] in seen:  # delivered twice in one read: its prompts came back once
                continue
            seen.add(fields.get("batch_id"))
            if "rows" in fields:  # the feeder's own skips, which it logged as it read them
                said |= {outcome["row_index"] for outcome in json.loads(fields["rows"])}
            try:
                result, batch_returned = self._settle(fields, payloads)
            except ScoresLost as lost:  # the batch stays, and is scored again by the models whose scores are gone
                self._score_again(fields["batch_id"], lost.models)
                continue
            except Exception as exc:  # never retried forever: set aside, reported, its prompts settled when known
                result, batch_returned = self._set_aside(entry_id, fields, payloads, exc)
            deliveries.append(result)
            returned += batch_returned
            if "batch_id" in fields:
                cleanup += [self.keys.batch(fields["batch_id"]), self.keys.scores(fields["batch_id"])]
        combined = one_delivery_each(deliveries, self.ledger.is_settled)
        self.before_commit()
        fresh = self.ledger.commit(combined.outcomes, combined.rows, combined.score_rows, combined.sft_rows)
        self.skips.say([outcome for outcome in fresh if outcome.outcome == SKIPPED and outcome.row_index not in said])
        new_ids = {outcome.prompt_id for outcome in fresh if outcome.outcome != DUPLICATE}  # as the ledger wrote them
        self.live.add([r for r in combined.rows if r["prompt_id"] in new_ids], [r for r in combined.score_rows if r["prompt_id"] in new_ids])
        if not self._warned_of_thinking and (warning := self.live.numbers.thinking_scored()):  # early: a long run can be stopped
            self._warned_of_thinking = True
            log.warning(warning)
        with self.client.pipeline() as pipe:
            pipe.xdel(self.keys.ready, *[entry_id for entry_id, _ in entries])
            if cleanup:
                pipe.delete(*cleanup)
            if returned:
                pipe.hincrby(self.keys.stats, "prompts_returned", returned)
            pipe.hset(self.keys.stats, "rows_written", len(self.ledger.rows))
            if self.live.due():
                pipe.hset(self.keys.stats, "report", self.live.summary())
            pipe.execute()
        return len(entries), len(fresh)

    def publish_live(self) -> None:
        """The numbers at the end; a coordinator that wrote nothing (the run was complete) does not wait to count the
        files again, and leaves the numbers its predecessor published."""
        if self.live.added or not self.live.reading():
            self.client.hset(self.keys.stats, "report", self.live.summary())

    def _set_aside(self, entry_id, fields: dict[str, str], payloads: dict, exc: Exception) -> tuple[BatchOutcome, int]:
        """A ready message that cannot be processed (a corrupt payload, scores that do not fit its candidates) would
        crash every coordinator that reads it, restart after restart. It goes to the run's `unprocessable` list
        (see `rsample status`) with its error; the prompts of a payload that can still be read are skipped with it."""
        reason = f"{UNPROCESSABLE}: {first_line(exc, with_type=True)}"
        log.error("run %s: ready message %s (%s) set aside: %s", self.config.run_id, entry_id, fields.get("batch_id", "rows"), reason)
        record = json.dumps({"entry": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, "fields": fields, "error": reason})
        with self.client.pipeline() as pipe:
            pipe.rpush(self.keys.unprocessable, record)
            pipe.expire(self.keys.unprocessable, defaults.FAILED_TTL)
            pipe.hincrby(self.keys.stats, "unprocessable", 1)
            pipe.execute()
        try:
            batch = GeneratedBatch.from_dict(json.loads(payloads[fields["batch_id"]][0]))
        except Exception:  # nothing readable: its rows stay in flight, and the run says so in `rsample status`
            return BatchOutcome(), 0
        outcomes = [Outcome(p.prompt.row_index, p.prompt.prompt_id, SKIPPED, reason) for p in batch.prompts]
        return BatchOutcome(outcomes=outcomes), len(batch.prompts)

    def _fetch_payloads(self, batch_ids: list[str]) -> dict[str, tuple[bytes | None, dict]]:
        """Each batch's generated payload and its reward scores, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.get(self.keys.batch(batch_id))
                pipe.hgetall(self.keys.scores(batch_id))
            answers = pipe.execute()
        return {batch_id: (answers[2 * i], answers[2 * i + 1]) for i, batch_id in enumerate(batch_ids)}

    def _settle(self, fields: dict[str, str], payloads: dict[str, tuple[bytes | None, dict]]) -> tuple[BatchOutcome, int]:
        """One ready message's outcomes, and how many prompts it brings back from the workers (out of the window)."""
        if "rows" in fields:  # rows the feeder settled itself: bad rows and duplicates
            return BatchOutcome(outcomes=[Outcome.from_dict(o) for o in json.loads(fields["rows"])]), 0
        failure = fields.get("failed")
        raw, stored_scores = payloads[fields["batch_id"]]
        if raw is None and failure is not None and "prompts" in fields:  # generation gave up
            prompts = json.loads(fields["prompts"])
            return BatchOutcome(outcomes=[Outcome(index, pid, SKIPPED, failure) for index, pid in prompts]), len(prompts)
        if raw is None:  # a repeated delivery of a batch already written
            return BatchOutcome(), 0
        batch = GeneratedBatch.from_dict(json.loads(raw))
        verdicts = []
        if failure is None and any(p.needs_scoring(self.config.min_candidates_scored) for p in batch.prompts):
            models = range(len(self.config.reward_models))
            if missing := [m for m in models if str(m).encode() not in stored_scores]:
                raise ScoresLost(missing)
            verdicts = [json.loads(stored_scores[str(m).encode()]) for m in models]
        return aggregate_batch(self.config, batch, verdicts, failure), len(batch.prompts)

    def _score_again(self, batch_id: str, models: list[int]) -> None:
        """A batch announced as scored whose scores Redis no longer holds (evicted under an evicting maxmemory-policy):
        its rows were skipped as unprocessable. Its payload is there, so its scoring jobs run again, but for one still
        waiting or running (the batch handed on early), which hands it on itself."""
        with self.client.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hget(SafeJob.key_for(score_job_id(self.config.run_id, model, batch_id)), "status")
            pending = {model for model, status in zip(models, pipe.execute()) if status in _PENDING}
        if again := [model for model in models if model not in pending]:
            log.warning("run %s batch %s: Redis lost the scores of reward model(s) %s (evicted?): scoring it again",
                        self.config.run_id, batch_id, ", ".join(map(str, again)))
            enqueue_scoring(self.client, self.config, batch_id, again)


_PENDING = {status.encode() for status in ("queued", "started", "scheduled", "deferred")}
"""RQ's states of a job that has yet to finish."""


class ScoresLost(Exception):
    """A ready batch lacks some of its reward models' scores: `models`."""

    def __init__(self, models: list[int]):
        super().__init__(f"no scores of reward model(s) {models}")
        self.models = models


def one_delivery_each(deliveries: list[BatchOutcome], settled: Callable[[Outcome], bool]) -> BatchOutcome:
    """The deliveries of one read as one commit, each row's outcome and data rows from one delivery only.

    A row may come back twice in one read: a job fed again as lost (`Feeder.refeed`) whose first run finished after
    all. Mixed, the two samplings' candidates were written as one prompt's (`num_candidates` below its score rows),
    or one delivery's failure was recorded beside the other's pair, which `--retry-failed` then wrote again. The
    first delivery that produced the row wins; where none did, the first."""
    def failed(outcome: Outcome) -> bool:
        return outcome.outcome == SKIPPED and is_failure_reason(outcome.reason)

    winner: dict[int, Outcome] = {}
    for delivery in deliveries:
        for outcome in delivery.outcomes:
            best = winner.get(outcome.row_index)
            if not settled(outcome) and (best is None or (failed(best) and not failed(outcome))):
                winner[outcome.row_index] = outcome
    combined = BatchOutcome()
    for delivery in deliveries:
        kept = [outcome for outcome in delivery.outcomes if winner.get(outcome.row_index) is outcome]
        produced = {outcome.prompt_id for outcome in kept if outcome.outcome != DUPLICATE}
        combined.outcomes += kept
        combined.rows += [row for row in delivery.rows if row["prompt_id"] in produced]
        combined.score_rows += [row for row in delivery.score_rows if row["prompt_id"] in produced]
        combined.sft_rows += [row for row in delivery.sft_rows if row["prompt_id"] in produced]
    return combined
