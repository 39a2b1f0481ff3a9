"""Running a backend over a batch so that one prompt's failure costs that prompt alone, and a broken worker costs
no prompt at all (see `rsample.workers.backends.faults`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from rsample.workers.backends.faults import WorkerFault, is_worker_fault
from rsample.workers.common.errors import first_line

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def run_isolating_failures(items: Sequence[T], run_all: Callable[[Sequence[T]], list[R]], run_one: Callable[[T], R],
                           skipped: Callable[[T, str], R], what: str, fault: type[WorkerFault] = WorkerFault) -> list[R]:
    """`run_all(items)`; if it raises, `run_one` on each item, an item that still raises becoming `skipped(item, error)`.

    Out-of-memory and device or engine faults are raised at once (never a prompt's fault), and so is a batch in
    which most items fail alone: that is a broken worker (or `fault`: reward code that fails on any input), not bad data.
    """
    try:
        return run_all(items)
    except Exception as exc:
        if is_worker_fault(exc) or len(items) == 1:
            raise
        log.warning("%s failed for a batch of %d (%s): retrying one by one", what, len(items), first_line(exc, with_type=True))
    results, failures = [], []
    for item in items:
        try:
            results.append(run_one(item))
        except Exception as exc:
            if is_worker_fault(exc):
                raise
            failures.append(first_line(exc, with_type=True))
            results.append(skipped(item, failures[-1]))
    if len(failures) * 2 > len(items):
        raise fault(f"{what} failed for {len(failures)} of {len(items)} prompts alone ({failures[0]}): {fault.blame}")
    return results
