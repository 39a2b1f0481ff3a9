"""What a worker process loaded once at start-up, handed to every job it runs (arq's `ctx`, for RQ).

RQ calls job functions by dotted path with JSON arguments only; the loaded models live here,
installed by `rsample.workers.runtime.worker` before the first job, never reloaded per job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from rsample.workers.backends.base import GenerationBackend, RewardBackend
from rsample.workers.backends.faults import WorkerFault, is_device_fault
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line

log = logging.getLogger(__name__)


def close_models(models) -> None:
    """Shuts down what the models started (vLLM's engine process): a vLLM engine left running keeps its process from
    exiting (Python waits for the engine process at exit) and the GPU's memory taken."""
    for model in models:
        close = getattr(model, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as exc:  # an engine that died already: nothing left to shut down
            log.warning("could not shut down %s: %s", type(model).__name__, first_line(exc, with_type=True))


@dataclass
class WorkerContext:
    client: redis.Redis
    config: RunConfig
    generator: GenerationBackend | None = None
    reward_models: dict[int, RewardBackend] = field(default_factory=dict)
    broken: str | None = None
    """Why this worker's device or engine can serve no more jobs; set by a job that met such a fault."""
    broken_cause: str = WorkerFault.cause
    """What kind of fault it was: a device's or engine's, or an error in a reward function."""
    stopping: bool = False
    moving_to: RunConfig | None = None
    """The run this worker moves to, its models kept, once its running jobs are done (see `worker.follow_the_runs`)."""
    role: str = "both"
    """What this worker serves (`RunConfig.models_of`)."""
    adopt: Callable[[RunConfig], RunConfig] = lambda config: config
    """A run's settings as this worker takes them up (the models whose code it lets run, of those the run names)."""
    _checking: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_made_as_loaded(self) -> None:
        """Before a job: the run in Redis must be the run this worker loaded. One forgotten and made again under its id
        with other settings (`rsample forget`, then `enqueue --run-id` the same) was served with the old ones, its
        output header naming the new. Other settings of the same models are taken up here; other models stop this
        worker, the job back in its queue with its retries, for a worker started for them."""
        from rq import get_current_job

        from rsample.workers.backends.template_date import pin_run_date
        from rsample.workers.runtime.run_state import RunGone, load_run

        run_id = self.config.run_id
        try:
            made = self.adopt(load_run(self.client, run_id))
        except RunGone:  # forgotten meanwhile: the job's own writes find that out
            return
        except RsampleError as exc:  # made again by another rsample version, whose settings this one cannot read
            made, unreadable = None, str(exc)
        with self._checking:
            if made is not None and made.output_settings() == self.config.output_settings():
                if made.created_at != self.config.created_at:  # the same settings, made again: its templates' date is the new one's
                    pin_run_date(made.created_at)
                    self.config = made
                return
            if made is not None and made.models_of(self.role) == self.config.models_of(self.role):
                log.warning("run %s was made again with other settings since this worker loaded it: it serves it with them "
                            "(the same models)", run_id)
                pin_run_date(made.created_at)
                self.config = made
                return
            reason = (f"run {run_id} was made again with other models since this worker loaded it" if made is not None
                      else f"run {run_id} was made again since this worker loaded it: {unreadable}")
            self.mark_broken(reason, cause="its run made again")
        job = get_current_job()
        if job is not None:  # the failure's retry puts it back as it came: no fault of the job's
            job.retries_left = (job.retries_left or 0) + 1
        raise RunMadeAgain(f"{reason}: the job goes back to its queue, for a worker started for them")

    def mark_broken(self, reason: str, cause: str = WorkerFault.cause) -> None:
        if self.broken is None:
            self.broken, self.broken_cause = reason, cause

    def close_models(self) -> None:
        close_models([self.generator, *self.reward_models.values()])

    @contextmanager
    def broken_by_device_faults(self):
        """Around a job's backend calls: a device or engine fault marks this worker broken (the job still fails, to
        run elsewhere, and the worker then stops); any other error passes through untouched."""
        try:
            yield
        except Exception as exc:
            if is_device_fault(exc):
                self.mark_broken(first_line(exc, with_type=True), getattr(exc, "cause", WorkerFault.cause))
            raise


class RunMadeAgain(RuntimeError):
    """The job's run is no longer the one this worker loaded the models of."""


_context: WorkerContext | None = None


def install(context: WorkerContext | None) -> None:
    global _context
    _context = context


def installed() -> WorkerContext | None:
    return _context


def current(run_id: str) -> WorkerContext:
    if _context is None:
        raise RsampleError("rsample jobs run only in `rsample worker` processes, which load the models first")
    if _context.config.run_id != run_id:
        raise RsampleError(f"this worker serves run {_context.config.run_id}, not {run_id}")
    _context.check_made_as_loaded()
    return _context
