"""A reward worker's chat templates rendered and tokenized in processes of their own (`RSAMPLE_RENDER_PROCESSES=N`).

The worker's device thread launches a pass as hundreds of small PyTorch ops, and PyTorch lets go of the GIL around
each one. A slot thread rendering a template meanwhile (Python: it wants the GIL) may take it at any such moment,
and the device thread then waits up to the interpreter's switch interval (5 ms) to get it back: a pass launched
slower than the GPU runs it leaves the GPU waiting. On an H200 the worker's passes took 1.19 times the direct
loop's GPU time per token while its slots rendered; whether the GIL is why is not yet measured (the next GPU
session's first call compares both ways). In processes of their own the templates take nothing from the device
thread: a slot waits on a pipe meanwhile. Off by default: on the 2-core machine's emulated device
(`bench/emulated_device.py`) it changed nothing, and on a CPU the model's own ops need the cores.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection

from rsample.workers.backends.template_date import pin_run_date, pinned_run_date
from rsample.workers.backends.templates import render_conversations
from rsample.workers.backends.waiting import wait_interruptibly
from rsample.workers.common import defaults
from rsample.workers.common.errors import RejectedInput, RsampleError, first_line
from rsample.workers.common.messages import Conversation

log = logging.getLogger(__name__)

PROCESSES_ENV = "RSAMPLE_RENDER_PROCESSES"


def configured_render_processes() -> int:
    """$RSAMPLE_RENDER_PROCESSES: how many processes render for each transformers reward model (0, the default: the
    worker's own slots render)."""
    value = os.environ.get(PROCESSES_ENV, "").strip() or "0"
    if not value.isdigit():
        raise RsampleError(f"${PROCESSES_ENV} must be a whole number of processes (0: render in the worker), not {value!r}")
    return int(value)


class InProcessRenderer:
    """Renders in the calling thread, one conversation list at a time: the tokenizer's settings are shared state."""

    def __init__(self, tokenizer, pad_token_id: int | None):
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self._lock = threading.Lock()

    def render(self, conversations: list[Conversation]) -> list[list[int]]:
        with self._lock:
            return render_conversations(self.tokenizer, conversations, self.pad_token_id)

    def close(self) -> None:
        pass


class RenderFailed(Exception):
    """What a render process raised, as one line: a template's own exceptions do not always survive pickling."""


class ProcessRenderer:
    """Renders in `processes` spawned processes, each with the reward tokenizer loaded once. Where one died (the OOM
    killer), they are started again, and the calls that found them broken are made again, once."""

    def __init__(self, spec: str, trust_remote_code: bool, pad_token_id: int | None, processes: int):
        self.spec = spec
        self.pad_token_id = pad_token_id
        self._start_args = (spec, trust_remote_code, os.getpid())
        self._processes = processes
        self._lock = threading.Lock()
        self._closed = False
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, never fork: the worker holds CUDA state and threads that a forked child would inherit broken
        return ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_load_tokenizer, initargs=self._start_args)

    def render(self, conversations: list[Conversation]) -> list[list[int]]:
        try:
            return self._render_with(self._pool, conversations)
        except BrokenProcessPool:  # one died (the OOM killer, a kill): the job should not pay for it; a second time, it does
            return self._render_with(self._pool, conversations)

    def _submit(self, pool: ProcessPoolExecutor, conversations: list[Conversation]):
        return pool.submit(_render, conversations, self.pad_token_id, pinned_run_date())  # the run's date goes with each call

    def _render_with(self, pool: ProcessPoolExecutor, conversations: list[Conversation]) -> list[list[int]]:
        call = None
        try:
            call = self._submit(pool, conversations)
            return wait_interruptibly(call)
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool and not self._closed:
                    log.warning("a render process of reward model %r died (%s): starting them again", self.spec, first_line(exc))
                    _stop(pool, 0.0)
                    self._pool = self._start()
            raise
        except BaseException:
            if call is not None:
                call.cancel()  # a job whose time is up: its render, if not yet sent to a process, is not sent
            raise

    def check(self, timeout: float = defaults.RENDER_PROCESSES_START_SECONDS) -> None:
        """The processes start and render once, within `timeout`: a failure is said at load, not in every job."""
        probe = [[{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hello!"}]]
        try:  # as many calls at once as processes: the pool starts one for each (it starts them as calls find none idle)
            probes = [self._submit(self._pool, probe) for _ in range(self._processes)]
            done, waiting = wait(probes, timeout=timeout)
            if waiting:
                raise TimeoutError(f"not ready after {timeout:.0f} s")
            for finished in done:
                try:
                    finished.result()
                except RejectedInput:  # the template refuses the probe itself: the process is up, and rendering
                    pass
        except Exception as exc:
            _stop(self._pool, 0.0)
            reason = str(exc) if isinstance(exc, RenderFailed) else first_line(exc, with_type=True)
            raise RsampleError(f"reward model {self.spec!r}: its render processes did not start "
                               f"({reason}); set ${PROCESSES_ENV}=0 to render in the worker") from None

    def close(self, grace: float = defaults.RENDER_PROCESSES_CLOSE_SECONDS) -> None:
        with self._lock:
            self._closed = True  # a call that finds the pool broken now must not start another
        _stop(self._pool, grace)


def _stop(pool: ProcessPoolExecutor, grace: float) -> None:
    """Shuts `pool` down, its processes killed where they do not end within `grace` seconds (a template that never
    returns must not keep the worker from stopping). Their ends are read from their sentinels: the pool's own thread
    reaps them meanwhile."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    running = {process.sentinel: process for process in processes}
    deadline = time.monotonic() + grace
    try:
        while running and (left := deadline - time.monotonic()) > 0:
            for ended in connection.wait(list(running), left):
                running.pop(ended)
    except OSError:  # a sentinel closed under us: the pool's thread has reaped that process; the rest are killed
        pass
    for process in running.values():
        process.kill()
    try:
        connection.wait(list(running), 5)  # gone when this returns, as far as the kernel lets us know
    except OSError:
        pass


def make_renderer(spec: str, tokenizer, trust_remote_code: bool, pad_token_id: int | None):
    processes = configured_render_processes()
    if not processes:
        return InProcessRenderer(tokenizer, pad_token_id)
    renderer = ProcessRenderer(spec, trust_remote_code, pad_token_id, processes)
    renderer.check()
    log.info("reward model %r: chat templates rendered in %d processes of their own", spec, processes)
    return renderer


_tokenizer = None


def _load_tokenizer(spec: str, trust_remote_code: bool, worker: int) -> None:
    from rsample.workers.backends.models import load_tokenizer

    global _tokenizer
    # a process group of its own: a stop signal to the worker's group (a Ctrl-C in the terminal, `kill -- -PGID`) is the
    # worker's to handle while it finishes its jobs, then it closes the pool; a SIGTERM to this process itself (the
    # pool's own clean-up, the worker's exit) still ends it
    os.setpgid(0, 0)
    threading.Thread(target=_exit_with_parent, args=(worker,), name="rsample-render-parent", daemon=True).start()
    try:
        _tokenizer = load_tokenizer(spec, "reward", trust_remote_code)
    except Exception as exc:  # said by each call (the pool would only say that a process ended)
        _tokenizer = RenderFailed(first_line(exc, with_type=not isinstance(exc, RsampleError)))


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A worker killed outright (SIGKILL) never closes its pool, and the pool's pipes stay open in its processes (each
    holds both ends): they would wait for work forever. `parent` comes from the worker, not from `os.getppid()` here:
    a worker killed while this process started has already left it to another parent."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(0)


def _render(conversations: list[Conversation], pad_token_id: int | None, run_moment: float | None) -> list[list[int]]:
    if isinstance(_tokenizer, RenderFailed):
        raise RenderFailed(str(_tokenizer))
    pin_run_date(run_moment)  # the run the worker serves now: it may have moved to another since the last call
    try:
        return render_conversations(_tokenizer, conversations, pad_token_id)
    except RejectedInput:
        raise
    except Exception as exc:
        raise RenderFailed(first_line(exc, with_type=True)) from None
