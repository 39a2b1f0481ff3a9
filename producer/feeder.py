"""The producer loop: streams dataset rows into generation jobs, a bounded window at a time.

Redis holds only the prompts in flight (at most `max_in_flight`), never the dataset. The feed cursor
(rows handed out so far) is stored in the same transaction as the jobs it enqueues, so a restarted
feeder neither skips nor repeats a row; rows the ledger already settled are never handed out again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

from rsample.producer.dataset import iter_located_rows
from rsample.producer.driver.ledger import Ledger
from rsample.producer.driver.skip_log import SkipLog
from rsample.producer.prompts import RowSkip, record_of, row_prompt_id
from rsample.workers.common.config import RunConfig
from rsample.workers.common.messages import DUPLICATE, SKIPPED, Outcome, PromptRecord
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import generation_job_data, make_queue

log = logging.getLogger(__name__)


class Feeder:
    def __init__(self, client: redis.Redis, config: RunConfig, ledger: Ledger):
        self.client = client
        self.config = config
        self.ledger = ledger
        self.keys = RunKeys(config.run_id)
        self.queue = make_queue(client, self.keys.generate_queue)
        self._refeeds = 0
        self.skip_log = SkipLog(log)
        self._readable_now_said = False
        self.restart()

    def restart(self) -> None:
        """(Re)reads the dataset up to the stored cursor, remembering prompt ids for duplicate detection."""
        self._rows: Iterator[tuple[int, Any, str | None]] = iter_located_rows(self.config.data)
        self._where: str | None = None
        """Where the last row read stands in its file (`shard-2.jsonl line 7`), for its skip's message."""
        self._position = 0
        self.seen: dict[str, int] = {}
        self.handed: dict[int, PromptRecord] = {}
        """Prompts handed to the workers whose rows the ledger has not settled yet: what Redis could lose."""
        self.batches: dict[str, list[int]] = {}
        """The rows of each batch this feeder handed out (since its last restart) that may not be settled yet."""
        self.settled_here: dict[int, Outcome] = {}
        """Rows the feeder settled itself (bad rows, duplicates) whose outcomes the ledger does not hold yet: their only
        copy is a message on the ready stream, which a Redis that came back older may have lost."""
        done, cursor, feed_pass = self.client.hmget(self.keys.stats, "feed_done", "feed_cursor", "feed_pass")
        self.exhausted = done is not None
        cursor = int(cursor or 0)
        self._batch_suffix = f"-p{int(feed_pass)}" if feed_pass else ""
        """Batch ids of a pass over the dataset after the first (see `Coordinator._feed_what_the_output_lacks`)."""
        while self._position < cursor:
            item = self._next_row()
            if item is None:
                break
            index, row = item
            record = self._to_record(index, row)
            self.ledger.check_row(index, row_prompt_id(record))
            if index in self.ledger.rows:
                self._passed_settled(index, record)
            elif isinstance(record, RowSkip):
                self.settled_here[index] = Outcome(index, None, SKIPPED, record.reason)
            elif (first := self.seen.setdefault(record.prompt_id, index)) == index:
                if record.prompt_id not in self.ledger.prompt_ids:
                    self.handed[index] = record
            else:
                self.settled_here[index] = Outcome(index, record.prompt_id, DUPLICATE, f"same prompt as row {first}")

    def _settled_here(self, outcome: Outcome) -> Outcome:
        self.settled_here[outcome.row_index] = outcome
        return outcome

    def _next_row(self) -> tuple[int, Any] | None:
        try:
            index, row, self._where = next(self._rows)
        except StopIteration:
            return None
        self._position += 1
        return index, row

    def _passed_settled(self, index: int, record: PromptRecord | RowSkip) -> None:
        """A row the ledger settled, read again: later rows are duplicates of its recorded prompt, not of what it reads
        as now (one an older rsample skipped may read now)."""
        if (recorded := self.ledger.recorded_prompt(index)) is not None:
            self.seen.setdefault(recorded, index)
        else:
            self._say_if_readable_now(record)

    def _say_if_readable_now(self, record: PromptRecord | RowSkip) -> None:
        """A row the run skipped unread (bad JSON, say) that reads as a prompt now keeps its outcome (`Ledger.changed`):
        said once, for whoever fixed it in place and re-ran the command to have it produced."""
        if isinstance(record, PromptRecord) and not self._readable_now_said:
            self._readable_now_said = True
            log.warning("row %d%s was skipped when run %s read it and reads as a prompt now (fixed in place?): its outcome stands, "
                        "since output rows are matched to dataset rows by number (so for any other such row); to produce such rows, "
                        "put them in a dataset of their own, or start over with --overwrite", record.row_index,
                        f" ({self._where})" if self._where else "", self.config.run_id)

    def _located(self, skip: RowSkip) -> str:
        """A skip's message with the file and line of its row, where the dataset is read line by line."""
        if self._where is None or f"({self._where}" in skip.detail:  # a line that is no JSON says it already
            return skip.detail
        return skip.detail.replace(f"row {skip.row_index}", f"row {skip.row_index} ({self._where})", 1)

    def _to_record(self, index: int, row: Any) -> PromptRecord | RowSkip:
        return record_of(self.config, index, row)

    def unsettled(self) -> list[PromptRecord]:
        """The handed-out prompts whose rows are not written yet (the settled ones are forgotten on the way)."""
        for index in [i for i, r in self.handed.items() if i in self.ledger.rows or r.prompt_id in self.ledger.prompt_ids]:
            del self.handed[index]
        return list(self.handed.values())

    def lost_outcomes(self) -> list[Outcome]:
        """The outcomes of the rows the feeder settled itself that the ledger does not hold yet (those it holds are
        forgotten on the way): lost, once nothing is left on the ready stream to bring them."""
        for index in [i for i in self.settled_here if i in self.ledger.rows]:
            del self.settled_here[index]
        return list(self.settled_here.values())

    def settle_again(self, outcomes: list[Outcome]) -> None:
        """Puts lost outcomes of the feeder's own on the ready stream again (the ledger ignores any it holds)."""
        if outcomes:
            self.client.xadd(self.keys.ready, {"rows": json.dumps([o.__dict__ for o in outcomes])})

    def open_batches(self) -> dict[str, list[int]]:
        """The handed-out batches with rows not written yet (those fully written are forgotten on the way)."""
        for batch_id in [b for b, rows in self.batches.items() if all(row in self.ledger.rows for row in rows)]:
            del self.batches[batch_id]
        return dict(self.batches)

    def _enqueue(self, pipe, batch_id: str, batch: list[PromptRecord]) -> None:
        """One generation job for `batch`, remembered as open until its rows are written."""
        self.queue.enqueue_many([generation_job_data(self.config, batch_id, [p.to_dict() for p in batch])], pipeline=pipe)
        self.batches[batch_id] = [p.row_index for p in batch]
        pipe.hincrby(self.keys.stats, "prompts_enqueued", len(batch))

    def refeed(self, records: list[PromptRecord], written_off: int = 0) -> None:
        """Hands lost prompts out again, in batches whose ids no earlier batch had; `written_off` prompts, lost for
        good, leave the in-flight window in the same transaction."""
        self._refeeds += 1
        attempt = f"{int(time.time())}{self._refeeds}"
        size = self.config.prompts_per_job
        with self.client.pipeline() as pipe:
            for start in range(0, len(records), size):
                batch = records[start:start + size]
                self._enqueue(pipe, f"r{batch[0].row_index}-again{attempt}", batch)
            if written_off:
                pipe.hincrby(self.keys.stats, "prompts_returned", written_off)
            pipe.execute()

    def in_flight(self) -> int:
        enqueued, returned = self.client.hmget(self.keys.stats, "prompts_enqueued", "prompts_returned")
        return int(enqueued or 0) - int(returned or 0)

    def top_up(self) -> int:
        """Enqueues whole batches while the window has room; returns how many prompts it handed out."""
        handed = 0
        limit = self.config.jobs.max_in_flight
        in_flight = self.in_flight()
        while not self.exhausted and (in_flight + self.config.prompts_per_job <= limit or in_flight == 0):
            count = self._feed_one_batch()
            handed += count
            in_flight += count
        return handed

    def _feed_one_batch(self) -> int:
        batch: list[PromptRecord] = []
        settled: list[Outcome] = []
        already_written = 0
        while len(batch) < self.config.prompts_per_job:
            item = self._next_row()
            if item is None:
                self.exhausted = True
                break
            index, row = item
            record = self._to_record(index, row)
            prompt_id = row_prompt_id(record)
            if index in self.ledger.rows:
                self.ledger.check_row(index, prompt_id)
                already_written += 1
                self._passed_settled(index, record)
            elif isinstance(record, RowSkip):
                self.skip_log.say_one(record.reason, self._located(record))
                settled.append(self._settled_here(Outcome(index, None, SKIPPED, record.reason)))
            elif prompt_id in self.seen or prompt_id in self.ledger.prompt_ids:
                settled.append(self._settled_here(Outcome(index, prompt_id, DUPLICATE, f"same prompt as row {self.seen.get(prompt_id, '?')}")))
            else:
                self.seen[prompt_id] = index
                self.handed[index] = record
                batch.append(record)
        with self.client.pipeline() as pipe:  # MULTI: the jobs and the cursor move together
            if batch:
                self._enqueue(pipe, f"r{batch[0].row_index}{self._batch_suffix}", batch)
            if settled:
                pipe.xadd(self.keys.ready, {"rows": json.dumps([o.__dict__ for o in settled])})
            progressed = len(settled) + already_written
            if progressed:
                pipe.hincrby(self.keys.stats, "rows_generated", progressed)
                pipe.hincrby(self.keys.stats, "rows_scored", progressed)
            if already_written:  # passed again, not generated: left out of the pace (`pace.take_sample`)
                pipe.hincrby(self.keys.stats, "rows_replayed", already_written)
            pipe.hset(self.keys.stats, "feed_cursor", self._position)
            if self.exhausted:
                pipe.hset(self.keys.stats, mapping={"feed_done": 1, "rows_total": self._position})
            pipe.execute()
        return len(batch)
