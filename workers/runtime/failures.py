"""What happens when a job has used up its retries (an exception, a timeout, or a worker that died on it).

A generation job of several prompts is split in two, each half with fresh retries, so that a poison
prompt ends alone; a job that still fails gives its prompts up as skipped, with the error, and the run
goes on. The failed job stays in RQ's failed registry for inspection.
"""

from __future__ import annotations

import json
import logging

from rq.job import Job

from rsample.workers.common.errors import first_line
from rsample.workers.common.messages import failure_reason, reward_label
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import enqueue_generation
from rsample.workers.runtime.safe_job import GENERATE_FUNCTION, JOB_FUNCTIONS, lost_by_redis

log = logging.getLogger(__name__)


def _reason(stage: str, exc_type, exc_value) -> str:
    detail = first_line(exc_value if exc_value is not None else exc_type(), with_type=True)
    return failure_reason(stage, detail)


def _reward_label(connection, run_id: str, index: int) -> str:
    from rsample.workers.runtime.run_state import load_run

    try:
        names = load_run(connection, run_id).score_names
    except Exception:  # the run is gone (forgotten, Redis restarted empty): its index still says which reward it was
        return reward_label(index)
    return reward_label(index, names[index] if 0 <= index < len(names) else None)


def on_job_failure(job: Job, connection, exc_type, exc_value, traceback) -> None:
    """RQ calls this after every failed attempt; only the last one (no retry left) acts."""
    if job.should_retry or job.func_name not in JOB_FUNCTIONS or lost_by_redis(job):  # lost: its prompts are fed again
        return
    from rsample.workers.runtime.run_state import load_run

    run_id, batch_id = job.args[0], job.args[1]
    keys = RunKeys(run_id)
    if job.func_name == GENERATE_FUNCTION:
        prompts = job.args[2]
        if len(prompts) > 1:
            try:
                config = load_run(connection, run_id)
                half = len(prompts) // 2
                log.warning("generation batch %s failed for good: splitting its %d prompts in two", batch_id, len(prompts))
                with connection.pipeline() as pipe:
                    enqueue_generation(connection, config, f"{batch_id}_0", prompts[:half], pipeline=pipe)
                    enqueue_generation(connection, config, f"{batch_id}_1", prompts[half:], pipeline=pipe)
                    pipe.execute()
                return
            except Exception:  # never lose the prompts: give them up below instead
                log.exception("could not split batch %s", batch_id)
        reason = _reason("generation", exc_type, exc_value)
        fields = {"batch_id": batch_id, "failed": reason, "prompts": json.dumps([[p["row_index"], p["prompt_id"]] for p in prompts])}
    else:
        reason = _reason(f"scoring with {_reward_label(connection, run_id, job.args[2])}", exc_type, exc_value)
        fields = {"batch_id": batch_id, "failed": reason}
    log.error("run %s batch %s: %s (job %s is in the failed registry)", run_id, batch_id, reason, job.id)
    connection.xadd(keys.ready, fields)
