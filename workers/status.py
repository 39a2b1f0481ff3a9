"""`rsample status`: per-stage counts, rates, queue depths and workers of a run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import redis
from rq import Worker

from workers.keys import RunKeys
from workers.queues import make_queue
from workers.runs import load_run, read_stats
from workers.summary import summarize


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
    prompts: int
    generated: int
    scored: int
    written: int
    complete: bool
    queues: list[QueueStatus]
    summary: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        seconds = self.summary["seconds"]
        rate = lambda count: f"{count / seconds:.2f}/s" if seconds > 0 else "-"  # noqa: E731
        state = "complete" if self.complete else "running"
        out = [
            f"run {self.run_id} ({state}), policy {self.policy}, {seconds:.0f} s since start",
            f"  prompts {self.prompts}: generated {self.generated} ({rate(self.generated)}), "
            f"scored {self.scored} ({rate(self.scored)}), written {self.written} ({rate(self.written)})",
            f"  pairs {self.summary['pairs_written']}, dropped identical {self.summary['dropped_identical']}, "
            f"dropped by margin {self.summary['dropped_margin']}, completions {self.summary['completions_generated']} "
            f"({self.summary['completions_per_second']}/s)",
        ]
        out += [f"  skipped, {reason}: {count}" for reason, count in self.summary["skipped"].items()]
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
    total_batches = stats.num_batches
    complete = total_batches is not None and client.scard(keys.done) >= total_batches
    summary = summarize(stats, config.created_at, now=time.time())
    return RunStatus(
        run_id=config.run_id,
        policy=config.policy,
        prompts=int(stats.get("prompts_enqueued")),
        generated=int(stats.get("prompts_generated")),
        scored=int(stats.get("prompts_scored")),
        written=int(stats.get("prompts_aggregated")),
        complete=complete,
        queues=queues,
        summary=summary.to_dict(),
    )
