"""An RQ job class that runs nothing but rsample's own job functions.

With JSON payloads nobody can plant a pickle, but RQ still imports whatever dotted path a job names:
anyone who can write to the Redis could enqueue `os.system`. Workers and the coordinator load jobs with
this class, which refuses any function or callback that is not rsample's.
"""

from __future__ import annotations

from rq.job import Job

GENERATE_FUNCTION = "rsample.workers.stages.generate.generate_batch"
SCORE_FUNCTION = "rsample.workers.stages.score.score_batch"
FAILURE_CALLBACK_NAME = "rsample.workers.runtime.failures.on_job_failure"
JOB_FUNCTIONS = frozenset({GENERATE_FUNCTION, SCORE_FUNCTION})


class UnsafeJobError(Exception):
    """A job in the queue names code that rsample does not run."""


class SafeJob(Job):
    @property
    def func(self):
        if self.func_name not in JOB_FUNCTIONS:
            raise UnsafeJobError(f"refusing job {self.id}: {self.func_name!r} is not an rsample job function")
        return super().func

    @property
    def failure_callback(self):
        if self._failure_callback_name not in (None, FAILURE_CALLBACK_NAME):
            raise UnsafeJobError(f"refusing job {self.id}: failure callback {self._failure_callback_name!r}")
        return super().failure_callback

    @property
    def success_callback(self):
        if self._success_callback_name is not None:
            raise UnsafeJobError(f"refusing job {self.id}: success callback {self._success_callback_name!r}")
        return None

    @property
    def stopped_callback(self):
        if self._stopped_callback_name is not None:
            raise UnsafeJobError(f"refusing job {self.id}: stopped callback {self._stopped_callback_name!r}")
        return None


def lost_by_redis(job: Job) -> bool:
    """Redis no longer holds this running job: it restarted without persistence (or the run was forgotten) while the
    job ran. Its run's coordinator feeds the prompts again under other batch ids, so nothing of this job may be written,
    retried or given up; RQ's heartbeat alone made its hash again, without a status."""
    return not job.connection.hexists(job.key, "status")
