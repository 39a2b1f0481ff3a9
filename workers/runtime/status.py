"""`rsample status`: per-stage counts, rates, queue depths and workers of a run."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis
from rq import Worker

from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.run_state import load_run, read_stats


@dataclass(frozen=True)
class QueueStatus:
    name: str
    queued: int
    started: int
    failed: int
    workers: int


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    policy: str
    rows: int
    generated: int
    scored: int
    written: int
    in_flight: int
    complete: bool
    seconds: float
    completions: int
    outcomes: dict[str, int]
    skip_reasons: dict[str, int]
    queues: list[QueueStatus]
    unprocessable: int = 0
    """Ready messages the coordinator set aside (see the run's `unprocessable` list in Redis)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        rate = lambda count: f"{count / self.seconds:.2f}/s" if self.seconds > 0 else "-"  # noqa: E731
        state = "complete" if self.complete else "running"
        out = [
            f"run {self.run_id} ({state}), policy {self.policy}, {self.seconds:.0f} s since start",
            f"  rows {self.rows}: generated {self.generated} ({rate(self.generated)}), scored {self.scored} "
            f"({rate(self.scored)}), written {self.written} ({rate(self.written)}); {self.in_flight} prompts in flight",
            f"  completions {self.completions} ({rate(self.completions)})",
        ]
        if self.outcomes:
            out.append("  outcomes: " + ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items())))
        out += [f"  skipped, {reason}: {count}" for reason, count in self.skip_reasons.items()]
        if self.unprocessable:
            out.append(f"  unprocessable results set aside: {self.unprocessable} (Redis list rsample:run:{self.run_id}:unprocessable)")
        out += [
            f"  queue {q.name}: {q.queued} queued, {q.started} running, {q.failed} failed, {q.workers} workers"
            for q in self.queues
        ]
        return out


def run_status(client: redis.Redis, run_id: str) -> RunStatus:
    config = load_run(client, run_id)
    keys = RunKeys(config.run_id)
    stats = read_stats(client, config.run_id)
    queues = []
    for name in keys.all_queues(len(config.reward_models)):
        queue = make_queue(client, name)
        queues.append(
            QueueStatus(name, queue.count, queue.started_job_registry.count, queue.failed_job_registry.count, Worker.count(queue=queue))
        )
    rows = int(stats.get("rows_total"))
    written = int(stats.get("rows_written"))
    return RunStatus(
        run_id=config.run_id,
        policy=config.policy,
        rows=rows,
        generated=int(stats.get("rows_generated")),
        scored=int(stats.get("rows_scored")),
        written=written,
        in_flight=int(stats.get("prompts_enqueued") - stats.get("prompts_returned")),
        complete=bool(stats.text("feed_done")) and written >= rows,
        seconds=time.time() - config.created_at,
        completions=int(stats.get("completions_generated")),
        outcomes=json.loads(stats.text("outcomes", "{}")),
        skip_reasons=json.loads(stats.text("skip_reasons", "{}")),
        queues=queues,
        unprocessable=int(stats.get("unprocessable")),
    )
