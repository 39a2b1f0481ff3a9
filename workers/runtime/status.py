"""`rsample status`: per-stage counts, rates, queue depths and workers of a run."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis

from rsample.workers.common import defaults
from rsample.workers.common.messages import commonest_reasons, failed_skips, folds_reasons
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.live_progress import read_progress
from rsample.workers.runtime.pace import Pace, read_samples, recent_pace, take_sample
from rsample.workers.runtime.processes import holder_may_live
from rsample.workers.runtime.queues import make_queue, worker_processes
from rsample.workers.runtime.redis_clock import redis_now
from rsample.workers.runtime.run_state import load_run


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
    generating: float = 0.0
    """Rows' worth of work done so far inside running generation jobs (not yet in `generated`)."""
    tokens: int = 0
    """Tokens generated, running jobs' included."""
    report: dict | None = None
    """The run report's key numbers over the rows the coordinator wrote (published every 10 s and at the end)."""
    recent: Pace | None = None
    """Rates over the last minutes, from the coordinator's samples; None when no coordinator samples now."""
    coordinated: bool = True
    """Whether a coordinator (`rsample run` or `rsample aggregate`) holds the run: without one, nothing is fed or written."""
    restored: int = 0
    """Rows its output files held when the coordinator started (a resume): written before this session."""
    replayed: int = 0
    """Of the rows counted as generated and scored, those the feeder passed again because they were written already."""
    generated_before: int = 0
    """Rows generated (less those passed again) when the coordinator started: a shared Redis keeps earlier sessions'."""
    scored_before: int = 0
    completions_before: int = 0
    tokens_before: int = 0
    session_seconds: float | None = None
    """Since the coordinator started, while the run goes on; None before one did, and once it is complete."""
    counters_lost_at: float | None = None
    """When the coordinator found that Redis had lost the run's counters (a restart without persistence, an eviction):
    completions, tokens and their rates count from then on."""
    failed_rows: int | None = None
    """Rows skipped because their work failed, counted by the coordinator (`skip_reasons` holds the commonest reasons
    only); None from a coordinator of an earlier version, which published every reason."""

    @property
    def failed(self) -> int:
        """Counted from the reasons where they are all there (an older coordinator, which leaves `failed_rows` as a
        newer one last published it, publishes every reason)."""
        return self.failed_rows if self.failed_rows is not None and folds_reasons(self.skip_reasons) else failed_skips(self.skip_reasons)

    def session_rate(self, done: float, before: int) -> float:
        """Rows per second over this coordinator's session, rows done before it left out: a resume that found most
        rows written would otherwise seem to fly (and its time left be seconds). Since the run was made without one."""
        if self.session_seconds is None:
            return done / self.seconds if self.seconds > 0 else 0.0
        return max(0.0, done - before) / self.session_seconds if self.session_seconds > 0 else 0.0

    def _stages(self) -> list[tuple[str, float, float]]:
        """(stage, rows left, rows per second) of generation and of writing, at the recent pace, else at the pace since
        the run was made."""
        generated = self.generated + self.generating
        if self.recent is not None:
            rates = (self.recent.generated_per_s, self.recent.written_per_s)
        else:
            rates = (self.session_rate(generated, self.replayed + self.generated_before), self.session_rate(self.written, self.restored))
        return [("generated", self.rows - generated, rates[0]), ("written", self.rows - self.written, rates[1])]

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the pace of the slower stage that moves (generation, or scoring and writing behind it); None
        while the run stalls or before anything moved."""
        if self.complete or not self.coordinated or self.seconds <= 0 or self.stalled_stage() or self.unserved():
            return None
        return max((left / rate for _, left, rate in self._stages() if left > 0 and rate > 0), default=None)

    def unserved(self) -> list[QueueStatus]:
        """Queues whose jobs wait with no worker to take them: the run does not move, whatever its recent pace says."""
        return [] if self.complete else [queue for queue in self.queues if queue.queued and not queue.workers]

    def stalled_stage(self) -> str | None:
        """What the recent pace shows not moving though rows are left: generation, or writing once generation no longer
        moves either (while generation moves, nothing written yet is a run starting up, or scoring behind)."""
        if self.recent is None or self.complete:
            return None
        (_, generate_left, generate_rate), (_, write_left, write_rate) = self._stages()
        generation_stalled = generate_left > 0 and generate_rate <= 0
        writing_stalled = write_left > 0 and write_rate <= 0 and (generation_stalled or generate_left <= 0)
        if generation_stalled:
            return "generated or written" if writing_stalled else "generated"
        return "written" if writing_stalled else None

    def to_dict(self) -> dict:
        return {**asdict(self), "eta_seconds": self.eta_seconds, "unserved_queues": [queue.name for queue in self.unserved()]}

    def finished_line(self) -> str:
        """A finished run in one line: a Redis keeps a month of them, which `rsample status` would print in full. What
        asks for a look at it still shows: rows whose work failed, results set aside."""
        failed = self.failed
        return (f"run {self.run_id} (complete), policy {self.policy}, took {format_duration(self.seconds)}: {self.rows} rows, "
                f"{self.outcomes.get('pair', 0)} pairs"
                + (f"; {failed} skipped because their work failed (resume with --retry-failed)" if failed else "")
                + (f"; {self.unprocessable} unprocessable results set aside" if self.unprocessable else ""))

    def lines(self) -> list[str]:
        rows_rate = lambda count, before: f"{self.session_rate(count, before):.2f}/s"  # noqa: E731 (this session's)
        state = "complete" if self.complete else "running" if self.coordinated else (
            f"no coordinator: `rsample aggregate --run {self.run_id} --out ...`, or the `rsample run` that made it, feeds and writes it")
        age = f"took {format_duration(self.seconds)}" if self.complete else f"{format_duration(self.seconds)} since it was made"
        out = [
            f"run {self.run_id} ({state}), policy {self.policy}, {age}",
            f"  rows {self.rows}: generated {self.generated} ({rows_rate(self.generated, self.replayed + self.generated_before)}), "
            f"scored {self.scored} ({rows_rate(self.scored, self.replayed + self.scored_before)}), written {self.written} "
            f"({rows_rate(self.written, self.restored)}); "
            f"{self.in_flight} prompts in flight" + (f"; {self.restored} rows were written before this session" if self.restored else ""),
            f"  completions {self.completions} ({rows_rate(self.completions, self.completions_before)}), tokens {self.tokens} "
            f"({rows_rate(self.tokens, self.tokens_before)})"
            + (f"; running jobs are {self.generating:.1f} rows into their work" if self.generating else "")
            + (f"; counted since Redis lost the run's counters {format_duration(max(0.0, time.time() - self.counters_lost_at))} ago"
               if self.counters_lost_at else ""),
        ]
        if self.recent is not None and not self.complete:
            window = format_duration(self.recent.seconds)
            out.append(f"  last {window}: generated {self.recent.generated_per_s:.2f}/s, written {self.recent.written_per_s:.2f}/s, "
                       f"tokens {self.recent.tokens_per_s:.1f}/s"
                       + (f"; nothing {stalled} in the last {window}" if (stalled := self.stalled_stage()) else ""))
        out += [f"  no worker serves {queue.name}: its {queue.queued} jobs wait (start `rsample workers`, or `rsample worker`)"
                for queue in self.unserved()]
        if self.eta_seconds is not None:
            since = "its coordinator started" if self.session_seconds is not None else "it was made"
            pace = f"the last {format_duration(self.recent.seconds)}'s pace" if self.recent is not None else f"the pace since {since}"
            out.append(f"  about {format_duration(self.eta_seconds)} left at {pace}")
        if self.report and self.report.get("pairs"):
            out.append("  data so far: " + "; ".join(report_numbers(self.report)))
        if self.outcomes:
            out.append("  outcomes: " + ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items())))
        shown = commonest_reasons(self.skip_reasons)  # folded by the coordinator; an older one published them all
        out += [f"  skipped, {reason}: {count}" for reason, count in shown.items()]
        failed = self.failed
        if failed:
            out.append(f"  ({failed} skipped because their work failed: once its cause is fixed, resume with --retry-failed)")
        if self.unprocessable:
            out.append(f"  unprocessable results set aside: {self.unprocessable} (Redis list rsample:run:{self.run_id}:unprocessable)")
        out += [
            f"  queue {q.name}: {q.queued} queued, {q.started} running, {q.failed} failed, {q.workers} workers"
            for q in self.queues
        ]
        return out


def report_numbers(report: dict) -> list[str]:
    """The live report's numbers as `rsample status` prints them."""
    parts = [f"{report['pairs']} pairs"]
    for name, model in report.get("models", {}).items():
        figures = []
        if model.get("margin_mean") is not None:
            figures.append(f"mean margin {model['margin_mean']:.3f}")
        if model.get("length_rho") is not None:
            figures.append(f"length-score rank correlation {model['length_rho']:+.2f}")
        if figures:
            parts.append(f"{name}: {', '.join(figures)}")
    if report.get("chosen_longer") is not None:
        parts.append(f"chosen longer in {report['chosen_longer']:.0%} of pairs")
    if report.get("truncated") is not None:
        parts.append(f"{report['truncated']:.1%} of samples truncated")
    return parts


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _recent(client: redis.Redis, run_id: str) -> Pace | None:
    """The recent pace up to now: the coordinator's samples (one every 10 s), ending with the counters as they are. Up
    to the last sample only, a status said "written 0.00/s" under a count that had just gone from 43 to 99."""
    samples = read_samples(client, run_id)
    now = redis_now(client)  # the samples' clock, not this machine's
    if not samples or now - samples[0].at > defaults.PACE_STALE:  # nobody samples now: no recent pace
        return None
    return recent_pace([take_sample(client, run_id, now), *samples], now)


def run_status(client: redis.Redis, run_id: str) -> RunStatus:
    config = load_run(client, run_id)
    keys = RunKeys(config.run_id)
    stats, live = read_progress(client, config.run_id)
    queues = []
    for name in keys.all_queues(len(config.reward_models)):
        queue = make_queue(client, name)
        queues.append(
            QueueStatus(name, queue.count, queue.started_job_registry.get_job_count(cleanup=False),
                        queue.failed_job_registry.get_job_count(cleanup=False), worker_processes(queue))
        )
    rows = int(stats.get("rows_total"))
    written = int(stats.get("rows_written"))
    complete = bool(stats.text("feed_done")) and written >= rows
    now = time.time()
    finished_at = stats.get("finished_at")
    return RunStatus(
        run_id=config.run_id,
        policy=config.policy,
        rows=rows,
        generated=min(rows, int(stats.get("rows_generated"))),  # a batch in flight when Redis lost the run is counted
        scored=min(rows, int(stats.get("rows_scored"))),  # twice when it comes back: once as it was, once fed again
        written=written,
        in_flight=max(0, int(stats.get("prompts_enqueued") - stats.get("prompts_returned"))),  # a re-fed Redis can overcount returns
        complete=complete,
        seconds=(finished_at if complete and finished_at else now) - config.created_at,
        completions=int(stats.get("completions_generated")),
        outcomes=json.loads(stats.text("outcomes", "{}")),
        skip_reasons=json.loads(stats.text("skip_reasons", "{}")),
        failed_rows=int(stats.get("skipped_failed")) if "skipped_failed" in stats.counters else None,
        counters_lost_at=stats.get("counters_lost_at") or None,
        queues=queues,
        unprocessable=int(stats.get("unprocessable")),
        generating=0.0 if complete else round(live.rows, 2),  # a killed job's last report, until it goes stale, is no work
        tokens=int(stats.get("tokens_generated")) + (0 if complete else live.tokens),
        report=json.loads(stats.text("report", "null")),
        recent=None if complete else _recent(client, config.run_id),
        # a killed coordinator's lock outlives it by up to 30 s: on its own host, its process tells at once
        coordinated=bool((holder := client.get(keys.coordinator_lock)) and holder_may_live(holder.decode())),
        restored=int(stats.get("rows_restored")),
        replayed=int(stats.get("rows_replayed")),
        generated_before=int(stats.get("session_generated_before")),
        scored_before=int(stats.get("session_scored_before")),
        completions_before=int(stats.get("session_completions_before")),
        tokens_before=int(stats.get("session_tokens_before")),
        session_seconds=now - started if (started := stats.get("session_started_at")) and not complete else None,
    )
