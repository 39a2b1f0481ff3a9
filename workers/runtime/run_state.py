"""A run's state in Redis: its settings and its counters."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.runtime.keys import RUNS_INDEX, RunKeys


def save_run(client: redis.Redis, config: RunConfig, rows_total: int | None = None) -> None:
    """With its row count in the same transaction: a run saved without it (killed in between) was fed by nobody."""
    keys = RunKeys(config.run_id)
    with client.pipeline() as pipe:
        pipe.set(keys.config, config.to_json())
        pipe.zadd(RUNS_INDEX, {config.run_id: config.created_at})
        if rows_total is not None:
            pipe.hset(keys.stats, "rows_total", rows_total)
        pipe.execute()


class RunGone(RsampleError):
    """The run's settings are not in this Redis: never made here, forgotten, expired, or lost with Redis's data."""


def start_fresh_batch_ids(client: redis.Redis, run_id: str) -> None:
    """A run that Redis lost, made again: its feed starts a pass of its own, so that its batch ids are none a job from
    before the loss may still write under (a scoring job that read a batch before the loss and writes after it would
    file its scores beside the texts of the batch made again). By the clock: the passes counted so far went too."""
    client.hset(RunKeys(run_id).stats, "feed_pass", int(time.time()))


def load_run(client: redis.Redis, run_id: str | None) -> RunConfig:
    """The settings of `run_id`, or of the latest run when it is None."""
    run_id = run_id or latest_run_id(client)
    raw = client.get(RunKeys(run_id).config)
    if raw is None:
        raise RunGone(f"no run {run_id!r} in this Redis (see `rsample status` for the runs it holds)")
    try:
        return RunConfig.from_json(raw)
    except (TypeError, KeyError, ValueError) as exc:  # a setting this version lacks, or lacks one it needs
        raise RsampleError(f"run {run_id!r} has settings this rsample version cannot read ({first_line(exc, with_type=True)}): "
                           "was it made by another version? Run the same version on every machine") from None


def latest_run_id(client: redis.Redis) -> str:
    """The newest run not yet finished (a worker without --run must not sit on a complete run while an older one
    waits), else the newest run."""
    newest_first = list_run_ids(client)
    if not newest_first:
        raise RunGone("this Redis holds no run yet: start one with `rsample enqueue` or pass --run")
    return next(iter(unfinished_runs(client)), newest_first[0])


UNFINISHED_RUNS = """
local found = {}
for _, run_id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
    if redis.call('EXISTS', ARGV[1] .. run_id .. ARGV[2]) == 0 then
        redis.call('ZREM', KEYS[1], run_id)
    elseif redis.call('HEXISTS', ARGV[1] .. run_id .. ARGV[3], 'finished_at') == 0 then
        table.insert(found, run_id)
        table.insert(found, redis.call('EXISTS', ARGV[1] .. run_id .. ARGV[4]))
    end
end
return found
"""
"""The runs not yet finished, newest first, each with whether its coordinator lock is held; runs whose settings expired
leave the index (as in `LIVE_RUNS`). In one step on the server: workers that follow the runs ask every few seconds, and
a Redis keeps a month of finished runs (500 of them cost each follower 500 commands a second as separate reads)."""


def unfinished_runs(client: redis.Redis) -> dict[str, bool]:
    """The runs not yet finished, newest first, each with whether a coordinator holds it (feeds and writes it)."""
    any_run = RunKeys("\0")
    prefix = any_run.config.split("\0")[0]
    suffixes = [name.split("\0")[1] for name in (any_run.config, any_run.stats, any_run.coordinator_lock)]
    found = client.eval(UNFINISHED_RUNS, 1, RUNS_INDEX, prefix, *suffixes)
    return {raw.decode(): bool(coordinated) for raw, coordinated in zip(found[::2], found[1::2])}


def run_to_serve(client: redis.Redis) -> str | None:
    """For workers that follow the runs: the newest run that a coordinator feeds, else the newest not yet finished."""
    return _newest_fed_first(unfinished_runs(client))


def _newest_fed_first(runs: dict[str, bool]) -> str | None:
    return next((run_id for run_id, coordinated in runs.items() if coordinated), next(iter(runs), None))


@dataclass(frozen=True)
class Move:
    """Workers that follow the runs leave their run for another: which, and why."""

    run_id: str
    reason: str


def move_from(client: redis.Redis, current: str) -> Move | None:
    """Workers serve their run until it is finished (or expired), or until nothing feeds it while another run is fed:
    then they move to `run_to_serve`. A run that is fed keeps them until it is finished, newer runs waiting."""
    runs = unfinished_runs(client)
    target = _newest_fed_first(runs)
    if target is None or target == current:
        return None
    if current not in runs:
        return Move(target, f"run {current} is {'finished' if client.exists(RunKeys(current).config) else 'gone (forgotten or expired)'}")
    if not runs[current] and runs[target]:
        return Move(target, f"nothing feeds run {current} (no coordinator holds it) while run {target} is fed")
    return None


LIVE_RUNS = """
local kept = {}
for _, run_id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
    if redis.call('EXISTS', ARGV[1] .. run_id .. ARGV[2]) == 1 then
        table.insert(kept, run_id)
    else
        redis.call('ZREM', KEYS[1], run_id)
    end
end
return kept
"""
"""The runs whose settings exist, newest first; the others leave the index. In one step, so that a run registered again
meanwhile (its command run again after it expired) is never dropped."""


def list_run_ids(client: redis.Redis) -> list[str]:
    """The runs this Redis holds, newest first. The index outlives a finished run's settings (`expire_run`): such a run
    is gone, and leaves the index here, so that workers polling it do not read every run ever made."""
    prefix, suffix = RunKeys("\0").config.split("\0")
    return [raw.decode() for raw in client.eval(LIVE_RUNS, 1, RUNS_INDEX, prefix, suffix)]


def expire_run(client: redis.Redis, run_id: str) -> None:
    """Keep a finished run's settings and counters for `rsample status`, but not forever. Its queues leave RQ's list of
    queues (rq-dashboard's Queues page, which grew by every run ever made) once nothing is left in them; one that
    holds failed jobs stays listed, for a look at them, until `rsample forget`."""
    from rsample.workers.runtime.queues import make_queue

    keys = RunKeys(run_id)
    with client.pipeline() as pipe:
        for key in keys.kept_after_finish:
            pipe.expire(key, defaults.RUN_TTL)
        pipe.execute()
    for name in run_queue_names(client, run_id):
        queue = make_queue(client, name)
        if queue.count == 0 and queue.failed_job_registry.get_job_count(cleanup=False) == 0:
            client.srem(queue.redis_queues_keys, queue.key)


def run_queue_names(client: redis.Redis, run_id: str) -> list[str]:
    """The run's queues that RQ lists (`rq:queues`) or that workers listed themselves on, read off their names: a run
    whose settings expired has no count of them."""
    from rq import Queue
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    keys = RunKeys(run_id)
    names = {raw.decode().removeprefix(Queue.redis_queue_namespace_prefix) for raw in client.smembers(Queue.redis_queues_keys)}
    workers_key = WORKERS_BY_QUEUE_KEY % ""
    names |= {raw.decode().removeprefix(workers_key) for raw in client.scan_iter(WORKERS_BY_QUEUE_KEY % f"{keys.queue_prefix}*")}
    return sorted(name for name in names if keys.owns_queue(name))


@dataclass
class RunStats:
    """A snapshot of a run's counters, as `rsample status` and the progress bars show them."""

    counters: dict[str, str]

    def get(self, name: str) -> float:
        value = self.counters.get(name)
        try:
            return float(value) if value is not None else 0.0
        except ValueError:
            return 0.0

    def text(self, name: str, default: str = "") -> str:
        return self.counters.get(name, default)


def read_stats(client: redis.Redis, run_id: str) -> RunStats:
    raw = client.hgetall(RunKeys(run_id).stats)
    return RunStats({k.decode(): v.decode() for k, v in raw.items()})
