"""Running a backend over a batch so that one prompt's failure costs that prompt alone, and a broken worker costs
no prompt at all (see `rsample.workers.backends.faults`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from rq.timeouts import BaseTimeoutException

from rsample.workers.backends.faults import WorkerFault, is_worker_fault
from rsample.workers.common.errors import RejectedInput, first_line

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def run_isolating_failures(items: Sequence[T], run_all: Callable[[Sequence[T]], list[R]], run_one: Callable[[T], R],
                           skipped: Callable[[T, str], R], what: str, fault: type[WorkerFault] = WorkerFault,
                           rejected: Callable[[T, str], R] | None = None) -> list[R]:
    """`run_all(items)`; if it raises, `run_one` on each item, an item that still raises becoming `skipped(item, error)`,
    or `rejected(item, why)` where the model refuses the item itself (`RejectedInput`).

    Out-of-memory and device or engine faults are raised at once (never a prompt's fault), and so is a batch in
    which most items fail alone: that is a broken worker (or `fault`: reward code that fails on any input), not bad data.
    Refused items are data, and do not count towards it.
    """
    try:
        return run_all(items)
    except Exception as exc:
        if is_worker_fault(exc) or isinstance(exc, BaseTimeoutException) or (len(items) == 1 and not (rejected and isinstance(exc, RejectedInput))):
            raise  # a job's time is up: retrying its prompts one by one would run with no timer left
        log.warning("%s failed for a batch of %d (%s): retrying one by one", what, len(items), first_line(exc, with_type=True))
    results, failures, refusals = [], [], 0
    for item in items:
        try:
            results.append(run_one(item))
        except RejectedInput as exc:
            if rejected is None:
                raise
            refusals += 1
            results.append(rejected(item, first_line(exc)))
        except Exception as exc:
            if is_worker_fault(exc) or isinstance(exc, BaseTimeoutException):
                raise
            failures.append(first_line(exc, with_type=True))
            results.append(skipped(item, failures[-1]))
    if failures and len(failures) * 2 > len(items) - refusals:
        raise fault(f"{what} failed for {len(failures)} of {len(items) - refusals} prompts alone ({failures[0]}): {fault.blame}")
    return results
