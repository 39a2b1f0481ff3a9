"""Heartbeats judged on Redis's clock, the one clock every machine of a run shares.

A running job's entry in RQ's started registry is scored with the moment its claim runs out, and the coordinator's
sweep requeues the entries whose moment has passed. RQ takes both moments from the clock of the machine at hand: a
coordinator whose clock ran a heartbeat TTL ahead of a worker's requeued every job of that live worker, each losing
a retry (and, with an idle worker of the same role, ran it twice until it was failed).
"""

from __future__ import annotations

import redis

CLAIM = """
local now = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', tonumber(now[1]) + tonumber(ARGV[2]), ARGV[1])
"""


def redis_now(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def claim_for(client: redis.Redis, registry_key: str, member: str, ttl: int, pipeline=None) -> None:
    """Scores `member` (an execution's `job_id:execution_id`) of the registry at Redis's now + `ttl`, if it is there."""
    client.register_script(CLAIM)(keys=[registry_key], args=[member, ttl], client=pipeline)
