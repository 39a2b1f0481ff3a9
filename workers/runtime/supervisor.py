"""`rsample workers`: one pinned `rsample worker` per GPU (or GPU group), restarted when it dies.

    rsample workers --redis-url URL --generate 0-5 --reward 6-7

The children are ordinary worker processes, so a supervised worker behaves exactly like one started by
hand; the supervisor only starts, watches, restarts and stops them. It loads no model itself (no torch
here): the children pin their GPUs before importing anything heavy. Without `--run` it follows the runs: it
waits for one, and when its run is finished its workers move to the next in their processes if it uses the same
models, else it starts them again for the next run's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import redis
from redis.backoff import ExponentialBackoff

from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError, first_line
from rsample.workers.runtime.connection import REDIS_URL_ENV, connect, redact_url
from rsample.workers.runtime.gpu_ids import pinned_devices
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.processes import RSAMPLE_COMMAND, Lineage, describe_exit, die_with_parent, kill_with_descendants, last_words
from rsample.workers.runtime.run_state import Move, RunGone, load_run, move_from, run_to_serve


def parse_gpus(text: str, option: str = "--gpus") -> list[int]:
    """`0,1,2`, `0-5` or a mix such as `0-3,6`, in the order given."""
    gpus: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not match:
            raise RsampleError(f"{option} {text!r}: {item.strip()!r} is not a GPU id or a range such as 0-3")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise RsampleError(f"{option} {text!r}: the range {item.strip()} runs backwards")
        gpus.extend(range(first, last + 1))
    twice = sorted({gpu for gpu in gpus if gpus.count(gpu) > 1})
    if twice:
        raise RsampleError(f"{option} {text!r} lists GPU {', '.join(map(str, twice))} twice")
    return gpus


def assign_gpus(gpus: str | None, role: str | None, generate: str | None, reward: str | None) -> dict[str, list[int]]:
    """The GPUs of each role, from either `--gpus` with `--role` or `--generate` / `--reward`."""
    if gpus is not None or role is not None:
        if generate is not None or reward is not None:
            raise RsampleError("use either --gpus with --role, or --generate / --reward, not both")
        if gpus is None or role is None:
            raise RsampleError("--gpus and --role go together, e.g. --gpus 0-3 --role generate")
        return {role: parse_gpus(gpus, "--gpus")}
    if generate is None and reward is None:
        raise RsampleError("say which GPUs to use: --gpus 0-3 --role generate, or --generate 0-5 --reward 6-7 (on a machine without GPU, "
                           "--gpus 0 --role both: one worker that generates and scores)")
    assignment = {}
    if generate is not None:
        assignment["generate"] = parse_gpus(generate, "--generate")
    if reward is not None:
        assignment["reward"] = parse_gpus(reward, "--reward")
    shared = sorted(set(assignment.get("generate", [])) & set(assignment.get("reward", [])))
    if shared:
        raise RsampleError(f"GPU {', '.join(map(str, shared))} given to both --generate and --reward")
    return assignment


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to keep alive: its role and the GPUs it is pinned to."""

    role: str
    gpus: tuple[int, ...]

    @property
    def devices(self) -> str:
        """The value of CUDA_VISIBLE_DEVICES and of `rsample worker --gpu`."""
        return ",".join(map(str, self.gpus))

    def __str__(self) -> str:
        return f"{self.role} worker on GPU {self.devices}"


def plan_workers(assignment: dict[str, list[int]], gpus_per_worker: int, source: str = "--gpus-per-worker") -> list[WorkerSpec]:
    """Workers that generate (`generate`, `both`) get `gpus_per_worker` consecutive GPUs each (tensor parallelism);
    reward workers one."""
    if gpus_per_worker < 1:
        raise RsampleError(f"{source} must be at least 1 (got {gpus_per_worker})")
    specs = []
    for role in ("generate", "both"):
        gpus = assignment.get(role, [])
        if len(gpus) % gpus_per_worker:
            kind = "generation" if role == "generate" else "both-role"
            raise RsampleError(f"{len(gpus)} {kind} GPUs do not split into workers of {gpus_per_worker} GPUs ({source})")
        specs += [WorkerSpec(role, tuple(gpus[i:i + gpus_per_worker])) for i in range(0, len(gpus), gpus_per_worker)]
    return specs + [WorkerSpec("reward", (gpu,)) for gpu in assignment.get("reward", [])]


def check_devices(specs: list[WorkerSpec]) -> str | None:
    """A GPU id the machine lacks would leave its worker on the CPU, silently slow: refused on a machine with GPUs.
    On one without any, the workers run on the CPU: returned as a warning. Ids count the GPUs this process sees (those
    an inherited CUDA_VISIBLE_DEVICES lists), as torch counts them."""
    pinned_devices(sorted({gpu for spec in specs for gpu in spec.gpus}))  # inside an allocation, out of it: refused
    import torch

    count = torch.cuda.device_count()
    missing = sorted({gpu for spec in specs for gpu in spec.gpus if gpu >= count})
    if not missing:
        return None
    if count:
        raise RsampleError(f"no GPU {', '.join(map(str, missing))} on this machine: it has {count} (ids 0 to {count - 1})")
    return f"WARNING this machine has no GPU: the {len(specs)} worker(s) run on its CPU"


def say(message: str) -> None:
    click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")


class StopSignals:
    """SIGINT / SIGTERM received: the first stops the supervisor, a second hurries its workers."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.count += 1


@dataclass
class Child:
    """A spec's current process and its restart bookkeeping."""

    spec: WorkerSpec
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    starts: int = 0
    quick_failures: int = 0
    restart_at: float = 0.0
    given_up: bool = False
    lineage: Lineage | None = None
    """What its process started, for stopping what a worker that died at once left running (its vLLM engine)."""


@dataclass(frozen=True)
class Unservable:
    """Why no worker can serve a run now."""

    reason: str
    run_gone: bool = False


class Supervisor:
    """Keeps one child per spec alive until SIGINT / SIGTERM, then stops them all and returns 0.

    Returns 1 once every worker has been given up. Children run in their own session, so a terminal's
    Ctrl-C reaches only the supervisor, which then sends each child one SIGTERM (RQ's warm shutdown: finish the
    current job); after the stop grace, or at a second Ctrl-C, a second SIGTERM (the worker releases its running jobs
    for requeueing and exits), and SIGKILL only for a child still there after that.
    """

    def __init__(self, specs: list[WorkerSpec], redis_url: str, run_id: str, log_dir: Path,
                 role_args: dict[str, list[str]] | None = None, restart_backoff: float = defaults.RESTART_BACKOFF,
                 give_up_after: int = defaults.GIVE_UP_AFTER, stop_grace: float = defaults.STOP_GRACE_SECONDS,
                 stops: StopSignals | None = None, next_run: Callable[[str], Move | None] | None = None,
                 same_models: Callable[[str, str], bool] | None = None, blocked: Callable[[str], Unservable | None] | None = None):
        """`next_run`, when given, is asked every few seconds whether the workers should move from the run they serve to
        another; `same_models(run, other)` whether they may move there in their processes, their models kept (they
        follow the runs themselves, `--follow`), else they are stopped and `run` returns for the next run's workers.
        `blocked(run)`: why no worker can serve the run now (Redis unreachable, the run gone from it), or None: a worker
        started then would exit at once, so it waits instead of counting failures until it is given up; without
        `next_run` (pinned to its run), for a run gone from Redis no longer than `PINNED_RUN_GONE_SECONDS`."""
        self.redis_url = redis_url
        self.run_id = run_id
        self.role_args = role_args or {}
        self.backoff = ExponentialBackoff(cap=defaults.RESTART_BACKOFF_CAP, base=restart_backoff)
        self.give_up_after = give_up_after
        self.stop_grace = stop_grace
        self.log_dir = log_dir / re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
        self.children = [Child(spec, self.log_dir / f"{spec.role}-gpu{spec.devices.replace(',', '-')}.log") for spec in specs]
        self.stops = stops or StopSignals()
        self.next_run = next_run
        self.same_models = same_models or (lambda run, other: False)
        self.blocked = blocked or (lambda run: None)
        self._said_blocked: str | None = None
        self._gone_since: float | None = None
        self.moved: Move | None = None
        """The run the workers were stopped for, when `run` returned to move them."""

    @property
    def signals(self) -> int:
        return self.stops.count

    def say(self, message: str) -> None:
        say(message)

    def command(self, spec: WorkerSpec) -> list[str]:
        """Pinned by its environment (`start`): its `--gpu` counts among the GPUs that shows it, all of them."""
        among_its_own = ",".join(str(index) for index in range(len(spec.gpus)))
        follow = ["--follow"] if self.next_run is not None else []
        return [*RSAMPLE_COMMAND, "worker", spec.role, "--run", self.run_id, *follow, "--gpu", among_its_own,
                *self.role_args.get(spec.role, [])]

    def start(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if child.log_path.exists():  # keep the previous attempt's log; the new one starts empty so its last words are its own
            child.log_path.replace(child.log_path.with_name(child.log_path.name + ".1"))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", REDIS_URL_ENV: self.redis_url,
               "CUDA_VISIBLE_DEVICES": pinned_devices(list(child.spec.gpus))}
        with child.log_path.open("w") as log_file:
            child.process = subprocess.Popen(
                self.command(child.spec), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=die_with_parent,  # a SIGKILLed supervisor leaves no orphans
            )
        child.lineage = Lineage(child.process)
        child.started_at = time.monotonic()
        child.starts += 1
        verb = "started" if child.starts == 1 else f"restarted (start {child.starts})"
        self.say(f"{verb} {child.spec} (pid {child.process.pid}; log {child.log_path})")

    def reap(self, child: Child, code: int) -> None:
        """A child exited by itself: schedule its restart, or give up on a worker that never gets going."""
        lived = time.monotonic() - child.started_at
        child.quick_failures = child.quick_failures + 1 if lived < defaults.QUICK_FAILURE_SECONDS else 0
        said = f"{child.spec} (pid {child.process.pid}) {describe_exit(code)} after {lived:.1f} s: {last_words(child.log_path)}"
        said += left_running(child)
        child.process = None
        if self._blocked():  # not the worker's failure: it starts again once the run can be served
            child.quick_failures, child.restart_at = 0, time.monotonic()
            self.say(f"{said}; it starts again once there is a run to serve")
            return
        if child.quick_failures >= self.give_up_after:
            child.given_up = True
            self.say(f"{said}; giving up after {child.quick_failures} failures in a row within {defaults.QUICK_FAILURE_SECONDS:g} s "
                     f"of starting (log: {child.log_path})")
            return
        delay = self.backoff.compute(max(child.quick_failures - 1, 0))
        child.restart_at = time.monotonic() + delay
        self.say(f"{said}; restarting in {delay:g} s")

    def run(self) -> int:
        """Until a stop signal (0), every worker given up (1), or `next_run` names a run to move to (0, `moved` set)."""
        self.stops.install()
        for child in self.children:
            self.start(child)
        checked = time.monotonic()
        while not self.signals:
            self._poll()
            if self.next_run is None and time.monotonic() - checked >= defaults.RUN_CHECK_SECONDS:
                checked = time.monotonic()
                self._blocked()  # a pinned run's absence is timed while its workers live, too: they would serve it for ever
            if all(child.given_up for child in self.children):
                self.say("every worker has been given up: exiting")
                return 1
            if self._gone_since is not None and time.monotonic() - self._gone_since > defaults.PINNED_RUN_GONE_SECONDS:
                self.say(f"run {self.run_id} has been gone from Redis for {defaults.PINNED_RUN_GONE_SECONDS:g} s (forgotten?), and "
                         "these workers serve it alone (--run): exiting")
                if any(child.process is not None and child.process.poll() is None for child in self.children):
                    self.stop()
                return 1
            if self.next_run is not None and time.monotonic() - checked >= defaults.RUN_CHECK_SECONDS:
                checked = time.monotonic()
                self.moved = self.next_run(self.run_id)
                if self.moved is not None and self.same_models(self.run_id, self.moved.run_id):
                    self.say(f"{self.moved.reason}: the workers move to run {self.moved.run_id} with the models they hold "
                             f"(their logs stay in {self.log_dir})")
                    self.run_id, self.moved = self.moved.run_id, None  # a worker started again from now on serves it
                elif self.moved is not None:
                    self.say(f"{self.moved.reason}: moving the workers to run {self.moved.run_id}")
                    break
            time.sleep(defaults.SUPERVISOR_POLL_SECONDS)
        self.stop()
        return 0

    def _poll(self) -> None:
        """Each child once: a live one's processes noted, a dead one reaped, one whose restart is due started."""
        for child in self.children:
            if child.process is not None:
                code = child.process.poll()
                if code is None:
                    if child.lineage is not None:
                        child.lineage.look()
                else:
                    self.reap(child, code)
            elif not child.given_up and time.monotonic() >= child.restart_at:
                if self._blocked():
                    child.restart_at = time.monotonic() + defaults.RUN_CHECK_SECONDS
                else:
                    self.start(child)

    def _blocked(self) -> bool:
        unservable = self.blocked(self.run_id)
        pinned_and_gone = unservable is not None and unservable.run_gone and self.next_run is None
        self._gone_since = (self._gone_since or time.monotonic()) if pinned_and_gone else None
        if unservable is None:
            if self._said_blocked is not None:
                self.say(f"run {self.run_id} can be served again: starting its workers that are not running")
                self._said_blocked = None
            return False
        if self._said_blocked != unservable.reason:
            self.say(f"{unservable.reason}: workers that exit start again once there is a run to serve")
            self._said_blocked = unservable.reason
        return True

    def stop(self) -> None:
        live = [child for child in self.children if child.process is not None and child.process.poll() is None]
        self.say(f"stopping {len(live)} worker(s): SIGTERM, then after {self.stop_grace:g} s or at a second Ctrl-C a second "
                 "SIGTERM (which releases their running jobs), then SIGKILL")
        for child in live:
            child.process.terminate()
        deadline = time.monotonic() + self.stop_grace
        while self.signals < 2 and time.monotonic() < deadline and any(child.process.poll() is None for child in live):
            time.sleep(defaults.SUPERVISOR_POLL_SECONDS)
        still = [child for child in live if child.process.poll() is None]
        for child in still:  # a second SIGTERM: the worker releases its running jobs for requeueing, then exits at once
            child.process.terminate()
        deadline = time.monotonic() + defaults.RELEASE_TIMEOUT + 1.0
        while time.monotonic() < deadline and any(child.process.poll() is None for child in still):
            time.sleep(defaults.SUPERVISOR_POLL_SECONDS)
        for child in live:
            if child.process.poll() is None:
                kill_with_descendants(child.process)  # SIGKILL: its jobs wait out their heartbeat TTL
            self.say(f"stopped {child.spec} (pid {child.process.pid}): it {describe_exit(child.process.wait())}{left_running(child)}")



def left_running(child: Child) -> str:
    """Stops what a worker that is gone left running, and says so (nothing, usually)."""
    left = child.lineage.stop_orphans() if child.lineage is not None else []
    return f"; stopped what it left running: {', '.join(left)}" if left else ""


def pinned_settings(client, run_id: str, stops: StopSignals) -> RunConfig | None:
    """The `--run` run's settings, once Redis answers (a supervisor started while Redis restarts); None if stopped
    while waiting. A run Redis does not hold is an error, in one line, as before."""
    said = False
    while not stops.count:
        try:
            return load_run(client, run_id)
        except redis.RedisError as exc:
            if not said:
                say(f"cannot reach Redis ({first_line(exc)}): trying again every {defaults.RUN_CHECK_SECONDS:g} s")
                said = True
        sleep_unless_stopped(stops, defaults.RUN_CHECK_SECONDS)
    return None


def sleep_unless_stopped(stops: StopSignals, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stops.count and time.monotonic() < deadline:
        time.sleep(defaults.SUPERVISOR_POLL_SECONDS)


def supervise(redis_url: str, run_id: str | None, assignment: dict[str, list[int]], gpus_per_worker: int | None,
              role_args: dict[str, list[str]], log_dir: Path, restart_backoff: float = defaults.RESTART_BACKOFF,
              give_up_after: int = defaults.GIVE_UP_AFTER, stop_grace: float = defaults.STOP_GRACE_SECONDS,
              reward_model_indices: tuple[int, ...] = ()) -> int:
    """Serves `run_id`, or without it follows the runs, until stopped; returns the exit code."""
    client = connect(redis_url, patient=False)
    stops = StopSignals().install()
    follower = None if run_id is not None else RunFollower(client, stops)
    run_id = run_id if follower is None else follower.first_run()
    while run_id is not None:
        config = pinned_settings(client, run_id, stops) if follower is None else follower.settings_of(run_id)  # every child serves this run
        if config is None:  # stopped while Redis was away
            return 0
        if "reward" in assignment:
            config.served_reward_models(reward_model_indices)  # a bad index fails here, before any worker loads a model
        if gpus_per_worker is not None:
            specs = plan_workers(assignment, gpus_per_worker)
        else:
            specs = plan_workers(assignment, config.models.tensor_parallel_size, "the run's --tensor-parallel-size")
        warning = check_devices(specs)
        supervisor = Supervisor(specs, redis_url, config.run_id, log_dir, role_args, restart_backoff, give_up_after, stop_grace,
                                stops, None if follower is None else follower.mover,
                                None if follower is None else follower.same_models_for(specs, config),
                                lambda run: why_unservable(client, run))
        if warning:
            supervisor.say(warning)
        plan = "; ".join(f"{spec.role} on GPU {spec.devices}" for spec in specs)
        supervisor.say(f"run {config.run_id} on {redact_url(redis_url)}: {len(specs)} worker(s): {plan}")
        code = supervisor.run()
        if supervisor.moved is None or stops.count:
            return code
        run_id = supervisor.moved.run_id
    return 0


def why_unservable(client: redis.Redis, run_id: str) -> Unservable | None:
    """Why a worker started now for `run_id` would exit at once, or None. Not the worker's failure: a Redis restarted
    empty has the run again once its coordinator makes it anew, and a forgotten run's workers follow the next one."""
    try:
        if client.exists(RunKeys(run_id).config):
            return None
    except redis.RedisError as exc:
        return Unservable(f"cannot reach Redis ({type(exc).__name__})")
    return Unservable(f"run {run_id} is gone from Redis (forgotten, or Redis lost it)", run_gone=True)


class RunFollower:
    """Which run a supervisor without `--run` serves: see `run_state.run_to_serve` and `move_from`. Redis going away
    is said once and waited through; the workers wait for it on their own."""

    def __init__(self, client: redis.Redis, stops: StopSignals):
        self.client = client
        self.stops = stops
        self.unreachable = False

    def first_run(self) -> str | None:
        """The run to serve, once there is one; None if stopped while waiting."""
        said = False
        while not self.stops.count:
            run_id = self._ask(run_to_serve, self.client)
            if run_id is not None:
                return run_id
            if not said and not self.unreachable:
                say("waiting for a run: this Redis holds none that is not finished (start one with `rsample enqueue`)")
                said = True
            self._sleep(defaults.RUN_CHECK_SECONDS)
        return None

    def settings_of(self, run_id: str) -> RunConfig | None:
        """The run's settings, once Redis answers, or those of the run to serve instead where it is gone (forgotten while
        the workers were being stopped for it) or its settings cannot be read (made by another rsample version: said
        once, and waited through); None if stopped while waiting."""
        unreadable = None
        while not self.stops.count:
            try:
                config = self._ask(load_run, self.client, run_id)
            except RunGone:
                say(f"run {run_id} is gone from Redis (forgotten?): choosing the run to serve again")
                run_id = self.first_run()
                if run_id is None:
                    return None
                continue
            except RsampleError as exc:
                if unreadable != run_id:
                    say(f"{exc}; waiting for another run")
                    unreadable = run_id
                self._sleep(defaults.RUN_CHECK_SECONDS)
                run_id = self._ask(run_to_serve, self.client) or run_id
                continue
            if config is not None:
                return config
            self._sleep(defaults.RUN_CHECK_SECONDS)
        return None

    def mover(self, current: str) -> Move | None:
        return self._ask(move_from, self.client, current)

    def same_models_for(self, specs: list[WorkerSpec], held: RunConfig) -> Callable[[str, str], bool]:
        """Whether every worker of `specs` holds the models of the other run too (`RunConfig.models_of`): the models of
        `held`, the settings they were started with, as each worker compares its own. Never the current run's settings
        as Redis holds them now: gone (forgotten, expired), or registered again from its output files (its speed
        settings at their defaults), they would make the supervisor count on a move its workers do not make."""
        def same(run: str, other: str) -> bool:
            try:
                following = self._ask(load_run, self.client, other)
            except RsampleError:  # gone meanwhile, or unreadable here: the workers are started again for what comes
                return False
            return following is not None and all(held.models_of(spec.role) == following.models_of(spec.role) for spec in specs)
        return same

    def _ask(self, question, *args):
        try:
            answer = question(*args)
        except redis.RedisError as exc:
            if not self.unreachable:
                say(f"cannot reach Redis ({first_line(exc)}): trying again every {defaults.RUN_CHECK_SECONDS:g} s")
                self.unreachable = True
            return None
        if self.unreachable:
            say("Redis is back")
            self.unreachable = False
        return answer

    def _sleep(self, seconds: float) -> None:
        sleep_unless_stopped(self.stops, seconds)
