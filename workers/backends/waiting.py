"""Waiting on a device that another thread drives, without becoming deaf to a job's timeout."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from threading import Lock

from rsample.workers.common import defaults


def wait_interruptibly(future: Future, poll: float = defaults.ENGINE_WAIT_POLL_SECONDS):
    """`future.result()` in short waits: a job timeout (RQ's timer raises it into this thread) lands between two
    waits, where one long wait on a lock would never see it, and the slot would wait forever on a stuck device."""
    while True:
        try:
            return future.result(timeout=poll)
        except FutureTimeout:
            continue


@contextmanager
def holding_interruptibly(lock: Lock, poll: float = defaults.ENGINE_WAIT_POLL_SECONDS) -> Iterator[None]:
    """`with lock:`, taken in short waits for the same reason."""
    while not lock.acquire(timeout=poll):
        continue
    try:
        yield
    finally:
        lock.release()
