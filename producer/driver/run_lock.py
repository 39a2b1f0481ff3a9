"""One coordinator per run, provably: a Redis lock refreshed by compare-and-set, kept alive by a thread from the
moment it is taken (so a long start-up, loading a large ledger or replaying the feeder, never lets it lapse),
and checked again right before every commit to the output files (the fence: a coordinator that lost its lock
writes nothing more)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis

from rsample.workers.common import defaults
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.processes import holder_here, holder_may_live

log = logging.getLogger(__name__)

REFRESH = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('expire', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 2
end
return 0
"""
"""Refresh only our own lock; take it back if Redis forgot it (restarted without persistence); 0 if another holds it."""

RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
"""Delete the lock only if it is still ours."""


class RunLock:
    def __init__(self, client: redis.Redis, key: str, run_id: str, seconds: int = defaults.COORDINATOR_LOCK_SECONDS):
        self.client = client
        self.key = key
        self.run_id = run_id
        self.seconds = seconds
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._refresh = client.register_script(REFRESH)
        self._release = client.register_script(RELEASE)
        self._lost: str | None = None
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def acquire(self) -> RunLock:
        """Takes the lock, or refuses in one line while another coordinator of this run lives.

        A holder on this host whose process is gone is taken over at once; one elsewhere, once its lock expires.
        """
        deadline = time.monotonic() + self.seconds + 5
        while not self.client.set(self.key, self.token, nx=True, ex=self.seconds):
            holder = (self.client.get(self.key) or b"").decode()
            pid = holder_here(holder)  # None: one elsewhere, or in another PID namespace, is waited out until its lock lapses
            here = pid is not None
            if here and not holder_may_live(holder):
                log.warning("taking over run %s from coordinator process %s, which is gone", self.run_id, pid)
                if self.client.set(self.key, self.token, xx=True, ex=self.seconds, get=True) == holder.encode():
                    break
                continue  # someone else took it in between: look again
            if here or time.monotonic() > deadline:
                raise RsampleError(
                    f"run {self.run_id} already has a live coordinator ({holder.rsplit(':', 1)[0]}): "
                    "one `rsample run` or `rsample aggregate` per run"
                )
            time.sleep(1)
        try:
            self._keeper = threading.Thread(target=self._keep_alive, name="rsample-run-lock", daemon=True)
            self._keeper.start()
        except BaseException:  # a stop signal right after the lock was taken: it is not kept
            self.release()
            raise
        return self

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.refresh()
            except RsampleError:
                return
            except redis.RedisError as exc:  # Redis away: the main loop rides it out, the next beat tries again
                log.debug("could not refresh the lock of run %s: %s", self.run_id, exc)

    def refresh(self) -> None:
        """Renews the lock if it is still ours; raises (now and at every later check) once another holds it."""
        if self._lost is None and self._refresh(keys=[self.key], args=[self.token, self.seconds]) == 0:
            holder = (self.client.get(self.key) or b"?").decode()
            self._lost = f"another coordinator ({holder.rsplit(':', 1)[0]}) took over run {self.run_id}: stopping"
        if self._lost is not None:
            raise RsampleError(self._lost)

    @property
    def lost(self) -> bool:
        """Another coordinator took the run over (seen at a refresh): the run's files and numbers are its now."""
        return self._lost is not None

    def release(self, timeout: float = defaults.LOCK_RELEASE_SECONDS) -> None:
        """Gives the lock up for the next coordinator; at most `timeout` seconds, since the client waits for a Redis that
        is away (a coordinator stopped with its Redis must still exit): a lock not released expires on its own."""
        if self._stop.is_set():  # released already (the coordinator and its caller both release)
            return
        self._stop.set()

        def release() -> None:
            try:
                self._release(keys=[self.key], args=[self.token])
            except redis.RedisError:
                pass

        releasing = threading.Thread(target=release, name="rsample-run-lock-release", daemon=True)
        releasing.start()
        releasing.join(timeout)
        if releasing.is_alive():
            log.warning("could not release the lock of run %s (Redis is away): another coordinator can take over in %d s",
                        self.run_id, self.seconds)
