"""A run's recent pace: its coordinator samples the counters every few seconds into a short list in Redis, so that
`rsample status` (a process of its own, anywhere) gives rates and a time left over the last minutes rather than
since the run was made, which after a night in the queue or an hour of downtime says nothing about now."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

from rsample.workers.common import defaults
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.live_progress import read_progress
from rsample.workers.runtime.redis_clock import redis_now


@dataclass(frozen=True)
class PaceSample:
    at: float
    generated: float
    """Rows generated, running jobs' share included."""
    written: int
    tokens: int


@dataclass(frozen=True)
class Pace:
    seconds: float
    """The span of samples the rates are measured over."""
    generated_per_s: float
    written_per_s: float
    tokens_per_s: float


def take_sample(client: redis.Redis, run_id: str, now: float | None = None) -> PaceSample:
    """At Redis's clock (the one every machine of a run shares: `status` runs anywhere and reads them all). Rows a
    resumed run's feeder passes again because they are written already count as generated, at the speed of reading
    them: left out, or the first minutes of a resume would promise it done in seconds."""
    stats, live = read_progress(client, run_id)
    generated = stats.get("rows_generated") - stats.get("rows_replayed") + live.rows
    return PaceSample(at=redis_now(client) if now is None else now, generated=round(generated, 3),
                      written=int(stats.get("rows_written")), tokens=int(stats.get("tokens_generated")) + live.tokens)


def record_sample(client: redis.Redis, run_id: str, sample: PaceSample) -> None:
    key = RunKeys(run_id).pace
    with client.pipeline() as pipe:
        pipe.lpush(key, json.dumps(asdict(sample)))
        pipe.ltrim(key, 0, defaults.PACE_SAMPLES - 1)
        pipe.execute()


def read_samples(client: redis.Redis, run_id: str) -> list[PaceSample]:
    """Newest first."""
    return [PaceSample(**json.loads(raw)) for raw in client.lrange(RunKeys(run_id).pace, 0, -1)]


def recent_pace(samples: list[PaceSample], now: float, window: float = defaults.PACE_WINDOW) -> Pace | None:
    """Rates between the newest sample and the oldest within `window` of it; None when nobody samples now (the newest is
    stale), or the samples span too little. A counter that went down (Redis lost the run, which starts it afresh)
    ends the span there."""
    if not samples or now - samples[0].at > defaults.PACE_STALE:
        return None
    newest = oldest = samples[0]
    for sample in samples[1:]:
        went_back = sample.generated > oldest.generated or sample.written > oldest.written or sample.tokens > oldest.tokens
        if newest.at - sample.at > window or went_back:
            break
        oldest = sample
    span = newest.at - oldest.at
    if span < defaults.PACE_MIN_SPAN:
        return None
    return Pace(seconds=span, generated_per_s=(newest.generated - oldest.generated) / span,
                written_per_s=(newest.written - oldest.written) / span, tokens_per_s=(newest.tokens - oldest.tokens) / span)
