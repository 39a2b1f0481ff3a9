"""The aggregator: turns scored batches into chosen/rejected rows, written as soon as a batch is complete.

It reads the run's ready stream from the start, so a restarted aggregator finds every batch again;
batches already written are in the run's done set and are passed over.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from workers import defaults
from workers.config import RunConfig
from workers.keys import RunKeys
from workers.messages import GeneratedBatch, PromptScores
from workers.output import JsonlWriter, pair_row, score_rows
from workers.selection import select_pair

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    rows: list[dict] = field(default_factory=list)
    score_rows: list[dict] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    skips: Counter = field(default_factory=Counter)


def aggregate_batch(config: RunConfig, batch: GeneratedBatch, verdicts: list[dict[str, dict]], failure: str | None = None) -> BatchOutcome:
    """`verdicts[m]` maps prompt id to reward model m's PromptScores; `failure` gives up the scored prompts."""
    outcome = BatchOutcome()
    outcome.counters["prompts_aggregated"] += len(batch.prompts)
    for prompt in batch.prompts:
        if prompt.skip_reason is not None:
            outcome.skips[prompt.skip_reason] += 1
            continue
        if not prompt.needs_scoring:
            outcome.counters["dropped_identical"] += 1
            continue
        if failure is not None:
            outcome.skips[failure] += 1
            continue
        per_model = [PromptScores.from_dict(v[prompt.prompt.prompt_id]) for v in verdicts]
        reasons = [v.skip_reason for v in per_model if v.skip_reason]
        if reasons:
            outcome.skips[reasons[0]] += 1
            continue
        scores_by_model = [v.scores for v in per_model]
        outcome.score_rows.extend(score_rows(prompt, scores_by_model, config.reward_models))
        selection = select_pair(scores_by_model, config.combine)
        if config.min_margin is not None and selection.margin < config.min_margin:
            outcome.counters["dropped_margin"] += 1
            continue
        outcome.rows.append(pair_row(prompt, selection, scores_by_model, config.reward_models))
        outcome.counters["pairs_written"] += 1
    return outcome


class Aggregator:
    def __init__(self, client: redis.Redis, config: RunConfig, out: str | Path, scores_out: str | Path | None = None):
        self.client = client
        self.config = config
        self.keys = RunKeys(config.run_id)
        resuming = client.scard(self.keys.done) > 0
        self.pairs = JsonlWriter(out, append=resuming)
        self.scores = JsonlWriter(scores_out, append=resuming)
        self._cursor = "0"

    def is_complete(self) -> bool:
        total = self.client.hget(self.keys.stats, "num_batches")
        return total is not None and self.client.scard(self.keys.done) >= int(total)

    def run(self, on_progress: Callable[[], None] | None = None, check: Callable[[], None] | None = None) -> None:
        """Processes ready batches until every batch of the run is written; `check` may raise to abort."""
        try:
            while not self.is_complete():
                self.step()
                if on_progress:
                    on_progress()
                if check:
                    check()
        finally:
            self.pairs.close()
            self.scores.close()

    def step(self, block_ms: int = defaults.AGGREGATOR_BLOCK_MS) -> int:
        """Handles the batches that became ready since the last step; returns how many it wrote."""
        answer = self.client.xread({self.keys.ready: self._cursor}, count=256, block=block_ms)
        written = 0
        for _, entries in answer:
            for entry_id, fields in entries:
                self._cursor = entry_id
                written += self._handle({k.decode(): v.decode() for k, v in fields.items()})
        return written

    def _handle(self, fields: dict[str, str]) -> int:
        batch_id = int(fields["batch_id"])
        if self.client.sismember(self.keys.done, batch_id):
            return 0
        failure = fields.get("failed")
        raw = self.client.get(self.keys.batch(batch_id))
        if raw is None:
            if failure is None:  # written by an earlier aggregator that stopped before marking it done
                log.warning("batch %s has no payload left; skipping it", batch_id)
                return 0
            outcome = BatchOutcome()
            outcome.counters["prompts_aggregated"] = int(fields.get("num_prompts", 0))
            outcome.skips[failure] = int(fields.get("num_prompts", 0))
        else:
            batch = GeneratedBatch.from_dict(json.loads(raw))
            stored = self.client.hgetall(self.keys.scores(batch_id))
            verdicts = [json.loads(stored[str(m).encode()]) for m in range(len(self.config.reward_models))] if failure is None and any(p.needs_scoring for p in batch.prompts) else []
            outcome = aggregate_batch(self.config, batch, verdicts, failure)
        self.pairs.write(outcome.rows)
        self.scores.write(outcome.score_rows)
        self.pairs.sync()
        self.scores.sync()
        with self.client.pipeline() as pipe:
            pipe.sadd(self.keys.done, batch_id)
            for name, value in outcome.counters.items():
                pipe.hincrby(self.keys.stats, name, value)
            for reason, value in outcome.skips.items():
                pipe.hincrby(self.keys.skips, reason, value)
            pipe.delete(self.keys.batch(batch_id), self.keys.scores(batch_id))
            pipe.execute()
        return 1
