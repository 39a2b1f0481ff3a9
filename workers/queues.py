"""RQ queues and job options of a run: JSON on the wire, explicit timeouts, bounded retries."""

from __future__ import annotations

import redis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from workers import defaults
from workers.keys import RunKeys
from workers.messages import PromptRecord

FAILURE_CALLBACK = Callback("workers.failures.on_job_failure")


def make_queue(client: redis.Redis, name: str) -> Queue:
    """JSONSerializer, so nobody who can write to the Redis can make a worker unpickle code."""
    return Queue(name, connection=client, serializer=JSONSerializer)


def generation_job_id(run_id: str, batch_id: int) -> str:
    return f"{run_id}-generate-{batch_id}"


def score_job_id(run_id: str, model_index: int, batch_id: int) -> str:
    return f"{run_id}-score{model_index}-{batch_id}"


def generation_job_data(run_id: str, batch_id: int, prompts: list[PromptRecord]):
    return Queue.prepare_data(
        "workers.generate.generate_batch",
        args=[run_id, batch_id, [p.__dict__ for p in prompts]],
        job_id=generation_job_id(run_id, batch_id),
        description=f"generate batch {batch_id} ({len(prompts)} prompts) of run {run_id}",
        timeout=defaults.GENERATION_JOB_TIMEOUT,
        result_ttl=defaults.RESULT_TTL,
        failure_ttl=defaults.FAILED_TTL,
        retry=Retry(max=defaults.JOB_RETRIES),
        on_failure=FAILURE_CALLBACK,
    )


def enqueue_scoring(client: redis.Redis, run_id: str, batch_id: int, num_reward_models: int) -> None:
    keys = RunKeys(run_id)
    for model_index in range(num_reward_models):
        make_queue(client, keys.score_queue(model_index)).enqueue_call(
            "workers.score.score_batch",
            args=[run_id, batch_id, model_index],
            job_id=score_job_id(run_id, model_index, batch_id),
            description=f"score batch {batch_id} with reward model {model_index} of run {run_id}",
            timeout=defaults.SCORE_JOB_TIMEOUT,
            result_ttl=defaults.RESULT_TTL,
            failure_ttl=defaults.FAILED_TTL,
            retry=Retry(max=defaults.JOB_RETRIES),
            on_failure=FAILURE_CALLBACK,
        )
