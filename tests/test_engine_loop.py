"""The vLLM engine loop's watchdog: a step that hangs is logged while it hangs, not found out at the job timeout.

The engine here is a stand-in with vLLM's `LLMEngine` interface whose step blocks until released; the real engine
runs through the same loop in tests/test_vllm.py."""

import logging
import threading
import time
from types import SimpleNamespace

from faults import wait_for

from rsample.workers.backends.vllm_engine import EngineLoop


class BlockingEngine:
    def __init__(self):
        self.requests: list[str] = []
        self.release = threading.Event()

    def add_request(self, request_id, prompt, params):
        self.requests.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self):
        self.release.wait(30)
        finished, self.requests = self.requests, []
        return [SimpleNamespace(request_id=request_id, finished=True) for request_id in finished]

    def abort_request(self, request_ids):
        self.requests = [r for r in self.requests if r not in request_ids]


def test_a_step_that_hangs_is_logged_while_it_hangs_and_then_the_request_completes(caplog):
    caplog.set_level(logging.WARNING, logger="rsample.workers.backends.vllm_engine")
    engine = BlockingEngine()
    loop = EngineLoop(engine, warn_after=0.2)
    try:
        request_id, future = loop.submit("prompt", None)
        warnings = lambda: [r.getMessage() for r in caplog.records if "step has been running" in r.getMessage()]  # noqa: E731
        wait_for(lambda: warnings(), 10, "a warning about the hanging step", interval=0.01)
        time.sleep(1.0)  # about five more multiples of 0.2 s, and twenty of the watchdog's checks
        assert "with 1 requests waiting on it" in warnings()[0]
        assert 2 <= len(warnings()) <= 8  # once per multiple of warn_after (about 6), not at every check (about 24)
        engine.release.set()
        assert future.result(timeout=10).request_id == request_id
        logged = len(warnings())
        time.sleep(0.6)  # idle now: nothing more to say
        assert len(warnings()) == logged
    finally:
        engine.release.set()
        loop.close()


def test_closing_the_loop_logs_no_error_and_fails_what_waits(caplog):
    """A normal close went through the error handler: every worker's shutdown logged a traceback."""
    caplog.set_level(logging.INFO, logger="rsample.workers.backends.vllm_engine")
    engine = BlockingEngine()
    loop = EngineLoop(engine, warn_after=30)
    loop.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    try:
        loop.submit("prompt", None)
    except RuntimeError as exc:
        assert str(exc) == "the vLLM engine stopped: closed"
    else:
        raise AssertionError("a closed loop took a request")
