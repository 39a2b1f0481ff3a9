"""The aggregator: turns finished work from the ready stream into output rows and ledger outcomes.

Every message is handled idempotently: the ledger writes a row's outcome once, whatever is delivered
twice. A handled message is deleted from the stream together with its batch's payloads, so Redis
keeps only what is still in flight.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import redis

from workers import defaults
from workers.config import RunConfig
from workers.keys import RunKeys
from workers.ledger import DROPPED_IDENTICAL, DROPPED_MARGIN, PAIR, SKIPPED, Ledger, Outcome
from workers.messages import GeneratedBatch, PromptScores
from workers.output import pair_row, score_rows
from workers.selection import select_pair

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    outcomes: list[Outcome] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    score_rows: list[dict] = field(default_factory=list)


def aggregate_batch(config: RunConfig, batch: GeneratedBatch, verdicts: list[dict[str, dict]], failure: str | None = None) -> BatchOutcome:
    """`verdicts[m]` maps prompt id to reward model m's PromptScores; `failure` gives up the prompts left to score."""
    result = BatchOutcome()
    for prompt in batch.prompts:
        record = prompt.prompt

        def settle(kind: str, reason: str | None = None) -> None:
            result.outcomes.append(Outcome(record.row_index, record.prompt_id, kind, reason))

        if prompt.skip_reason is not None:
            settle(SKIPPED, prompt.skip_reason)
            continue
        if not prompt.needs_scoring:
            settle(DROPPED_IDENTICAL)
            continue
        if failure is not None:
            settle(SKIPPED, failure)
            continue
        per_model = [PromptScores.from_dict(v[record.prompt_id]) for v in verdicts]
        reasons = [v.skip_reason for v in per_model if v.skip_reason]
        if reasons:
            settle(SKIPPED, reasons[0])
            continue
        scores_by_model = [v.scores for v in per_model]
        result.score_rows.extend(score_rows(prompt, scores_by_model, config.reward_models))
        selection = select_pair(scores_by_model, config.combine)
        if config.min_margin is not None and selection.margin < config.min_margin:
            settle(DROPPED_MARGIN)
            continue
        result.rows.append(pair_row(prompt, selection, scores_by_model, config.reward_models))
        settle(PAIR)
    return result


class Aggregator:
    def __init__(self, client: redis.Redis, config: RunConfig, ledger: Ledger):
        self.client = client
        self.config = config
        self.ledger = ledger
        self.keys = RunKeys(config.run_id)
        self.cursor = "0"

    def step(self, block_ms: int = defaults.AGGREGATOR_BLOCK_MS) -> int:
        """Handles what became ready since the last step; returns the number of rows newly settled."""
        answer = self.client.xread({self.keys.ready: self.cursor}, count=64, block=block_ms)
        settled = 0
        for _, entries in answer or []:
            for entry_id, raw in entries:
                self.cursor = entry_id
                settled += self._handle(entry_id, {k.decode(): v.decode() for k, v in raw.items()})
        return settled

    def _handle(self, entry_id: bytes, fields: dict[str, str]) -> int:
        returned = 0  # prompts coming back from the workers, leaving the in-flight window
        cleanup: list[str] = []
        if "rows" in fields:  # rows the feeder settled itself: bad rows and duplicates
            result = BatchOutcome(outcomes=[Outcome.from_dict(o) for o in json.loads(fields["rows"])])
        else:
            batch_id = fields["batch_id"]
            failure = fields.get("failed")
            cleanup = [self.keys.batch(batch_id), self.keys.scores(batch_id)]
            raw = self.client.get(self.keys.batch(batch_id))
            if raw is None and failure is not None and "prompts" in fields:  # generation gave up
                prompts = json.loads(fields["prompts"])
                result = BatchOutcome(outcomes=[Outcome(index, pid, SKIPPED, failure) for index, pid in prompts])
                returned = len(prompts)
            elif raw is None:  # a repeated delivery of a batch already written
                result = BatchOutcome()
            else:
                batch = GeneratedBatch.from_dict(json.loads(raw))
                verdicts = []
                if failure is None and any(p.needs_scoring for p in batch.prompts):
                    stored = self.client.hgetall(self.keys.scores(batch_id))
                    verdicts = [json.loads(stored[str(m).encode()]) for m in range(len(self.config.reward_models))]
                result = aggregate_batch(self.config, batch, verdicts, failure)
                returned = len(batch.prompts)
        fresh = self.ledger.commit(result.outcomes, result.rows, result.score_rows)
        with self.client.pipeline() as pipe:
            pipe.xdel(self.keys.ready, entry_id)
            if cleanup:
                pipe.delete(*cleanup)
            if returned:
                pipe.hincrby(self.keys.stats, "prompts_returned", returned)
            pipe.hset(self.keys.stats, "rows_written", len(self.ledger.rows))
            pipe.execute()
        return len(fresh)
