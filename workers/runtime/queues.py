"""RQ queues and job options of a run: JSON on the wire, explicit timeouts, bounded retries."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.safe_job import FAILURE_CALLBACK_NAME, GENERATE_FUNCTION, SCORE_FUNCTION, SafeJob

FAILURE_CALLBACK = Callback(FAILURE_CALLBACK_NAME)


def make_queue(client: redis.Redis, name: str) -> Queue:
    """JSONSerializer, so nobody who can write to the Redis can make a worker unpickle code."""
    return Queue(name, connection=client, serializer=JSONSerializer, job_class=SafeJob)


SLOT_SUFFIX = "-slot"
"""A worker's extra job loops register with RQ as `<worker name>-slot<k>`: one process, several RQ workers."""


def worker_processes(queue: Queue) -> int:
    """Worker processes serving `queue`, each counted once however many slots (job loops) it runs."""
    from rq import Worker

    return len({worker.name.split(SLOT_SUFFIX)[0] for worker in Worker.all(queue=queue)})


def generation_job_id(run_id: str, batch_id: str) -> str:
    return f"{run_id}-generate-{batch_id}"


def score_job_id(run_id: str, model_index: int, batch_id: str) -> str:
    return f"{run_id}-score{model_index}-{batch_id}"


def _options(config: RunConfig, timeout: int) -> dict:
    return {
        "timeout": timeout,
        "result_ttl": defaults.RESULT_TTL,
        "failure_ttl": defaults.FAILED_TTL,
        "retry": Retry(max=config.jobs.retries) if config.jobs.retries else None,
        "on_failure": FAILURE_CALLBACK,
    }


def generation_job_data(config: RunConfig, batch_id: str, prompts: list[dict]):
    """`prompts` are PromptRecord dicts: a generation job carries its whole input."""
    return Queue.prepare_data(
        GENERATE_FUNCTION,
        args=[config.run_id, batch_id, prompts],
        job_id=generation_job_id(config.run_id, batch_id),
        description=f"generate batch {batch_id} ({len(prompts)} prompts) of run {config.run_id}",
        **_options(config, config.jobs.generation_timeout),
    )


def enqueue_generation(client: redis.Redis, config: RunConfig, batch_id: str, prompts: list[dict], pipeline=None) -> None:
    make_queue(client, RunKeys(config.run_id).generate_queue).enqueue_many([generation_job_data(config, batch_id, prompts)], pipeline=pipeline)


def enqueue_scoring(client: redis.Redis, config: RunConfig, batch_id: str, models: Iterable[int] | None = None) -> None:
    """A batch's scoring jobs: one per reward model (of `models`, default all)."""
    keys = RunKeys(config.run_id)
    for model_index in range(len(config.reward_models)) if models is None else models:
        make_queue(client, keys.score_queue(model_index)).enqueue_call(
            SCORE_FUNCTION,
            args=[config.run_id, batch_id, model_index],
            job_id=score_job_id(config.run_id, model_index, batch_id),
            description=f"score batch {batch_id} with reward model {model_index} of run {config.run_id}",
            **_options(config, config.jobs.score_timeout),
        )
