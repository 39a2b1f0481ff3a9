"""Every tunable bound of the pipeline, in one place, each with the reason for its value."""

KEY_PREFIX = "rsample"
"""Namespace of every Redis key and queue, so a shared Redis keeps runs apart from other apps."""

PROMPTS_PER_JOB = 16
"""Prompts per generation job: large enough to give the engine a real batch, small enough to retry cheaply."""

REWARD_MICRO_BATCH = 16
"""Conversations per reward forward pass before out-of-memory halving kicks in."""

GENERATION_JOB_TIMEOUT = 3 * 3600
"""Seconds a generation job may run: n x max_new_tokens x prompts can take long (RQ's 180 s default is far too short)."""

SCORE_JOB_TIMEOUT = 3600
"""Seconds a reward-scoring job may run."""

JOB_RETRIES = 2
"""Retries of a failed job before it lands in RQ's failed registry and its prompts are counted as skipped."""

RESULT_TTL = 600
"""Seconds RQ keeps a finished job's (tiny) return value; payloads themselves are deleted by the aggregator."""

FAILED_TTL = 7 * 24 * 3600
"""Seconds a failed job stays inspectable in the failed registry (and rq-dashboard)."""

RUN_TTL = 30 * 24 * 3600
"""Seconds a finished run's settings and counters stay in Redis for `rsample status`."""

AGGREGATOR_BLOCK_MS = 1000
"""How long the aggregator blocks on the ready stream before refreshing progress."""

REDIS_CONNECT_TIMEOUT = 5
"""Seconds to wait for a Redis connection before saying it is unreachable."""
