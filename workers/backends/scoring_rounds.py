"""One thread feeds a reward model's device with every waiting job's sequences at once, sorted together.

A job's own conversations sort into few well-filled batches only when it has many: a default job of 16 prompts
with n=8 has 128, and their lengths spread over the whole range, so its batches pad much or run small. Here the
worker's slots hand their tokenized jobs to this thread and wait; each round takes every job waiting, sorts all
their sequences by length into one least-cost split (`TokenBudget.plan`) and runs it, while the slots prepare
the next jobs. Only this thread touches the device.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from rsample.workers.backends.batching import TokenBudget
from rsample.workers.backends.device_clock import CudaPassClock
from rsample.workers.backends.waiting import wait_interruptibly
from rsample.workers.common import defaults
from rsample.workers.common.errors import first_line

R = TypeVar("R")

log = logging.getLogger(__name__)


@dataclass
class RoundTotals:
    """How well the device was fed, for the worker's log: the first thing to read when scoring is slower than it
    should be (device idle between rounds, or rounds that pad much or run many small passes)."""

    rounds: int = 0
    jobs: int = 0
    passes: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    busy_seconds: float = 0.0
    gpu_pass_seconds: float | None = None
    """On a GPU, by its own events: the passes' time, and the rounds' spans (passes plus the gaps between them)."""
    gpu_round_seconds: float = 0.0
    first_round_at: float | None = None
    last_round_end: float | None = None

    def line(self) -> str:
        span = (self.last_round_end or 0.0) - (self.first_round_at or 0.0)
        padding = 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0
        return (f"reward rounds: {self.rounds} rounds of {self.jobs / max(1, self.rounds):.1f} jobs, {self.passes} passes, "
                f"{self.tokens} tokens, {padding:.1%} padding; device busy {self.busy_seconds:.1f} s of the {span:.1f} s "
                "from the first round's start to the last one's end"
                + ("" if self.gpu_pass_seconds is None else
                   f"; GPU ran passes {self.gpu_pass_seconds:.1f} s of its rounds' {self.gpu_round_seconds:.1f} s"))


@dataclass
class _Job:
    sequences: Sequence[list[int]]
    future: Future = field(default_factory=Future)


class ScoringRounds(Generic[R]):
    """`score(sequences)` from any thread: one value per sequence, computed in rounds that pool the waiting jobs.

    `run_batch` runs one batch (sequences sorted by length) and may return device tensors unread; `read` turns a
    round's per-batch results into floats, once per round (the one wait for the device). The thread ends after
    `idle_seconds` without work and starts again with the next job, so a model that is no longer used is freed.
    """

    def __init__(self, budget: TokenBudget, run_batch: Callable[[Sequence[list[int]]], R],
                 read: Callable[[list[R]], list[float]], idle_seconds: float = 30.0, name: str = "rsample-reward-device",
                 clock: CudaPassClock | None = None):
        self.budget = budget
        self._run_batch = run_batch
        self._read = read
        self._idle_seconds = idle_seconds
        self._name = name
        self._clock = clock
        self._waiting: list[_Job] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.totals = RoundTotals()
        self._logged_at = time.monotonic()
        atexit.register(_log_totals, weakref.ref(self))

    def score(self, sequences: Sequence[list[int]]) -> list[float | None]:
        if not sequences:
            return []
        job = _Job(sequences)
        with self._wake:
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        try:
            return wait_interruptibly(job.future)
        except BaseException:
            job.future.cancel()  # a timed-out job: a round not yet started leaves it out
            raise

    def _serve(self) -> None:
        jobs: list[_Job] = []
        try:
            while True:
                with self._wake:
                    if not self._waiting:
                        self._wake.wait(self._idle_seconds)
                    if not self._waiting:
                        self._thread = None
                        return
                    jobs, self._waiting = self._waiting, []
                self._round([job for job in jobs if job.future.set_running_or_notify_cancel()])
                if time.monotonic() - self._logged_at >= defaults.REWARD_ROUNDS_LOG_SECONDS:
                    self._logged_at = time.monotonic()
                    log.info(self.totals.line())
        except BaseException as exc:  # never leave a slot waiting on a thread that is gone
            log.exception("the reward device thread stopped")
            with self._wake:
                self._thread = None
                jobs, self._waiting = [*jobs, *self._waiting], []
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(RuntimeError(f"the reward device thread stopped: {exc!r}"))

    def _round(self, jobs: list[_Job]) -> None:
        """Scores `jobs` together; when that fails, each alone, so that one job's fault (a sequence that runs out of
        memory alone, say) fails that job only."""
        if not jobs:
            return
        began = time.monotonic()
        if self._clock is not None:
            self._clock.discard()  # a failed round's passes: they belong to no round
        if self.totals.first_round_at is None:
            self.totals.first_round_at = began
        try:
            values = self._values([sequence for job in jobs for sequence in job.sequences])
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(_without_frames(exc))
                return
            log.warning("a round of %d jobs failed (%s): scoring them one by one", len(jobs), first_line(exc, with_type=True))
            values = None
        if values is None:  # out of the `except` block: the failed round's tensors are not held while the jobs run alone
            for job in jobs:
                try:
                    job.future.set_result(self._values(job.sequences))
                except Exception as alone:
                    job.future.set_exception(_without_frames(alone))
            return
        self.totals.rounds += 1
        self.totals.jobs += len(jobs)
        self.totals.last_round_end = time.monotonic()
        self.totals.busy_seconds += self.totals.last_round_end - began
        if self._clock is not None:
            passes, span = self._clock.collect()
            self.totals.gpu_pass_seconds = (self.totals.gpu_pass_seconds or 0.0) + passes
            self.totals.gpu_round_seconds += span
        position = 0
        for job in jobs:
            job.future.set_result(values[position:position + len(job.sequences)])
            position += len(job.sequences)

    def _values(self, sequences: Sequence[list[int]]) -> list[float | None]:
        """Each sequence's score; None for one too big for the device even alone (`TokenBudget.run`)."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths together: little padding
        too_big: set[int] = set()
        batches = self.budget.run([sequences[i] for i in order], self._counted_batch, too_big.add)
        read = iter(self._read(batches) if batches else [])
        values: list[float | None] = [None] * len(sequences)
        for position, index in enumerate(order):
            values[index] = None if position in too_big else next(read)
        return values

    def _counted_batch(self, batch: Sequence[list[int]]) -> R:
        if self._clock is not None:
            self._clock.before_pass()
        result = self._run_batch(batch)
        if self._clock is not None:
            self._clock.after_pass()
        self.totals.passes += 1
        self.totals.tokens += sum(len(ids) for ids in batch)
        self.totals.padded_tokens += len(batch) * max(len(ids) for ids in batch)
        return result


def _without_frames(exc: BaseException) -> BaseException:
    """The exception a slot re-raises, without the local variables of the frames it passed through: on a device,
    those are a failed pass's tensors, which would stay allocated for as long as the exception lives."""
    traceback.clear_frames(exc.__traceback__)
    return exc


def _log_totals(rounds: weakref.ref) -> None:
    """At the worker's exit: the totals of its whole life (a weak reference: this never keeps a model alive)."""
    live = rounds()
    if live is not None and live.totals.rounds:
        log.info(live.totals.line())
