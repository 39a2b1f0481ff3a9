"""What happens when a job has used up its retries: its prompts are counted as skipped, the run goes on."""

from __future__ import annotations

import logging

from workers.keys import RunKeys

log = logging.getLogger(__name__)


def on_job_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ calls this after every failed attempt; only the last one (no retry left) gives the batch up."""
    if job.should_retry:
        return
    run_id, batch_id = job.args[0], job.args[1]
    stage = "generation" if job.func_name.endswith("generate_batch") else f"scoring with reward model {job.args[2]}"
    reason = f"{stage} failed: {exc_type.__name__}: {str(exc_value).strip().splitlines()[0] if str(exc_value).strip() else ''}"
    fields = {"batch_id": batch_id, "failed": reason[:300]}
    if stage == "generation":
        fields["num_prompts"] = len(job.args[2])
    log.error("run %s batch %s: %s (job %s is in the failed registry)", run_id, batch_id, reason, job.id)
    connection.xadd(RunKeys(run_id).ready, fields)
