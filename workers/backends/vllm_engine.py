"""One vLLM engine kept busy by several jobs at once.

`LLM.generate` waits for the slowest sequence of its batch before it returns, so a worker that runs one
job at a time leaves the GPU half idle at every batch tail. Here a single thread owns the engine: jobs
(one per worker slot, see `rsample.workers.runtime.worker`) hand it requests from their own threads and wait for
their results, while the engine's continuous batching mixes the head of the next job into the tail of
the last. Only this thread touches the engine, so vLLM needs no thread safety of its own.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rsample.workers.common import defaults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Submit:
    request_id: str
    prompt: Any
    params: Any
    future: Future


@dataclass(frozen=True)
class _Abort:
    request_ids: list[str]


class _Stop:
    """Ends the loop: the engine is about to be shut down."""


class EngineLoop:
    """Drives a vLLM `LLMEngine` (`LLM.llm_engine`) from one daemon thread; a second one logs a step that hangs."""

    def __init__(self, engine, name: str = "rsample-vllm-engine", warn_after: float = defaults.ENGINE_STEP_WARN_SECONDS):
        self._engine = engine
        self._inbox: queue.SimpleQueue[_Submit | _Abort] = queue.SimpleQueue()
        self._pending: dict[str, Future] = {}
        self._ids = itertools.count()
        self._broken: BaseException | None = None
        self._step: tuple[int, float] | None = None
        """(number, start) of the step running now, for the watchdog."""
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, args=(warn_after,), name=f"{name}-watchdog", daemon=True)
        self._watchdog.start()

    def submit(self, prompt: Any, params: Any) -> tuple[str, Future]:
        """Queues one request (a vLLM prompt and its SamplingParams or PoolingParams); returns its id and future."""
        if self._broken is not None:
            raise RuntimeError(f"the vLLM engine stopped: {self._broken}")
        request_id = f"rsample-{next(self._ids)}"
        future: Future = Future()
        self._inbox.put(_Submit(request_id, prompt, params, future))
        return request_id, future

    def abort(self, request_ids: list[str]) -> None:
        """Frees the engine of requests nobody waits for any more (a job that timed out or failed)."""
        if request_ids:
            self._inbox.put(_Abort(request_ids))

    def close(self, timeout: float = 10.0) -> None:
        """Stops the loop thread; requests still waiting fail. The engine itself is its owner's to shut down."""
        self._inbox.put(_Stop())
        self._closed.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        steps = itertools.count()
        try:
            while True:
                if self._take_inbox(block=not self._engine.has_unfinished_requests()):  # closed: no error to log
                    self._stop_with(RuntimeError("closed"))
                    return
                if self._engine.has_unfinished_requests():
                    self._step = (next(steps), time.monotonic())
                    outputs = self._engine.step()
                    self._step = None
                    for output in outputs:
                        if output.finished:
                            future = self._pending.pop(output.request_id, None)
                            if future is not None:
                                future.set_result(output)
        except BaseException as exc:  # the engine died: fail every waiting job instead of hanging them
            log.exception("the vLLM engine loop stopped")
            self._stop_with(exc)

    def _stop_with(self, exc: BaseException) -> None:
        self._broken = exc
        for future in self._pending.values():
            future.set_exception(RuntimeError(f"the vLLM engine stopped: {exc}"))
        self._pending.clear()

    def _watch(self, warn_after: float) -> None:
        """Logs a step still running after `warn_after` s, and again at each multiple, with the requests waiting on it."""
        warned: tuple[int, int] = (-1, 0)  # (step, multiples of warn_after already logged)
        while not self._closed.wait(min(warn_after / 4, 30.0)):
            step = self._step
            if step is None:
                continue
            number, started = step
            multiples = int((time.monotonic() - started) // warn_after)
            if multiples > (warned[1] if warned[0] == number else 0):
                warned = (number, multiples)
                log.warning("the vLLM engine's step has been running for %.0f s, with %d requests waiting on it (stuck, or "
                            "compiling for a new shape?)", time.monotonic() - started, len(self._pending))

    def _take_inbox(self, block: bool) -> bool:
        """Adds every queued request; waits for one only when the engine has nothing to do. True: stop now."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return False
            block = False
            if isinstance(item, _Stop):
                return True
            if isinstance(item, _Abort):
                live = [rid for rid in item.request_ids if self._pending.pop(rid, None) is not None]
                if live:
                    self._engine.abort_request(live)
                continue
            try:
                self._engine.add_request(item.request_id, item.prompt, item.params)
            except Exception as exc:  # a request vLLM refuses fails alone
                item.future.set_exception(exc)
            else:
                self._pending[item.request_id] = item.future
