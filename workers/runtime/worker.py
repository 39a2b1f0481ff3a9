"""Starting a long-lived worker process: pin the GPU, load the models once, then serve RQ jobs.

RQ's `SimpleWorker` runs jobs in this process (no fork): the forking worker hangs once torch has
run in the parent, and would reload the model for every job. Plain `SimpleWorker` claims a job for
its whole timeout (hours for generation), so a killed worker's job would wait that long; here a
heartbeat thread keeps the claim short and alive only while this process is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Callable, NoReturn

from rq import SimpleWorker, worker_registration
from rq.exceptions import StopRequested
from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.timeouts import TimerDeathPenalty
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from rsample.workers.backends.reward_specs import is_function, model_path
from rsample.workers.backends.template_date import pin_run_date
from rsample.workers.common import defaults
from rsample.workers.common.config import WORKER_ROLES, ModelSettings, RunConfig
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.cpu_share import take_cpu_share
from rsample.workers.runtime.processes import descendants_to_stop, signal_pids
from rsample.workers.runtime.queues import SLOT_SUFFIX
from rsample.workers.runtime.redis_clock import claim_for
from rsample.workers.runtime.safe_job import lost_by_redis

log = logging.getLogger(__name__)


class HeartbeatWorker(SimpleWorker):
    """A SimpleWorker whose running job stays claimed for `heartbeat_ttl` seconds past its last heartbeat."""

    heartbeat_ttl = defaults.JOB_HEARTBEAT_TTL

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """Also registers the worker again, as its birth did: a Redis restarted without persistence forgot it, and
        `rsample status`, the progress bars and rq-dashboard would count no workers while they work. Before RQ's own
        heartbeat, whose expiry then applies to the worker's key again. Between two polls of the queue, it ends the job
        loop of a worker that is leaving (`_leaving`)."""
        if self._leaving():
            raise StopRequested()
        if self.birth_date is not None:
            connection = pipeline if pipeline is not None else self.connection
            connection.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, connection)
        return super().heartbeat(timeout, pipeline)

    def _leaving(self) -> bool:
        """This job loop should end between two jobs: it was told to stop, or its process moves to another run (a flag,
        not a signal, that `follow_the_runs` sets; the loops poll the queue briefly, so they read it within seconds)."""
        context = worker_context.installed()
        moving = context is not None and context.moving_to is not None
        return (self._stop_requested or moving) and self.get_state() != WorkerStatus.BUSY

    @property
    def dequeue_timeout(self) -> int:
        return defaults.SLOT_DEQUEUE_TIMEOUT

    def clean_registries(self):
        """RQ's maintenance of the queues' registries, but for abandoned jobs, which the coordinator's sweep alone
        requeues: two cleaners that each read a job's retries would each requeue it, and it would run twice (a worker
        cleans as it starts, so a worker restarted after a crash met the sweep)."""
        for queue in self.queues:
            if not queue.acquire_maintenance_lock():  # another worker cleans it now
                continue
            try:
                for registry in (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry):
                    registry(queue=queue, job_class=self.job_class).cleanup()
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
            finally:
                queue.release_maintenance_lock()
        self.last_cleaned_at = rq_now()

    def execute_job(self, job, queue):
        execution = self.prepare_execution(job)
        claim_for(self.connection, job.started_job_registry.key, execution.composite_key, self.heartbeat_ttl)  # RQ's clock: ours
        self._outlive_registry(execution)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="rsample-heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join(timeout=defaults.HEARTBEAT_JOIN_TIMEOUT)  # a beat stuck waiting for Redis must not hold the job loop
        self.set_state(WorkerStatus.IDLE)
        self._stop_if_broken()

    def handle_job_success(self, job, queue, started_job_registry, execution):
        if not self._dropped_if_lost(job, execution):
            super().handle_job_success(job, queue, started_job_registry, execution)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        if not self._dropped_if_lost(job, execution):
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def handle_exception(self, job, *exc_info):
        """A job sent back because its run was made again with other models is no error of its code: one line, not
        RQ's traceback (the worker says why it stops)."""
        if isinstance(exc_info[1], worker_context.RunMadeAgain):
            log.warning("job %s: %s", job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)

    def _dropped_if_lost(self, job, execution) -> bool:
        """A job that Redis lost while it ran (`lost_by_redis`) is neither finished nor failed nor retried: RQ's
        bookkeeping failed on it with a traceback and then ran it again, where its run feeds its prompts anew."""
        if not lost_by_redis(job):
            return False
        log.warning("job %s: Redis no longer holds it (restarted without persistence, its run forgotten, or another run of "
                    "it finished first); nothing of this run of it is kept", job.id)
        with self.connection.pipeline() as pipe:
            pipe.delete(job.key)  # what RQ's heartbeat made again of it: a hash of nothing else, which would never expire
            self.cleanup_execution(job, pipe, execution)
            pipe.execute()
        return True

    def _stop_if_broken(self) -> None:
        """A job met a broken device or engine: stop every slot as SIGTERM would (the failed job is retried elsewhere)."""
        context = worker_context.installed()
        if context is not None and context.broken and not context.stopping:
            context.stopping = True
            log.error("worker %s: %s; stopping", self.name, context.broken)
            os.kill(os.getpid(), signal.SIGTERM)

    def _outlive_registry(self, execution) -> None:
        """RQ lists an execution in its job's registry 60 s longer than the execution itself lives; a job
        requeued from a dead worker within that window fails on the missing execution. Outlive the listing."""
        self.connection.expire(execution.key, self.heartbeat_ttl + 120)

    def _beat(self, job, execution, stop: threading.Event) -> None:
        while not stop.wait(max(1.0, self.heartbeat_ttl / 4)):
            try:
                with self.connection.pipeline() as pipe:
                    execution.heartbeat(job.started_job_registry, self.heartbeat_ttl, pipeline=pipe)
                    claim_for(self.connection, job.started_job_registry.key, execution.composite_key, self.heartbeat_ttl, pipe)
                    self.heartbeat(self.heartbeat_ttl + 60, pipeline=pipe)
                    pipe.execute()
                self._outlive_registry(execution)
            except Exception as exc:  # Redis away: the main thread's own retries will say so
                log.debug("heartbeat of job %s failed: %s", job.id, exc)


class SlotWorker(HeartbeatWorker):
    """One more job loop in the same process, on its own thread, sharing the loaded models.

    Only the main thread may handle signals and SIGALRM, so a slot times jobs out with a timer and is
    stopped by the main worker; it polls the queue briefly so that a stop reaches it within seconds.
    """

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


class MainWorker(HeartbeatWorker):
    """The main thread's job loop: a stop signal also tells the slots to stop after their current job."""

    slots: tuple[SlotWorker, ...] = ()
    sigint_ignored = False
    """SIGINT was ignored when this process started, as a shell's `cmd &` leaves it: Ctrl-C at the terminal is not for
    it, and RQ's handlers must not take it (the rest of its run, which ignores it too, would go on without it)."""
    stop_timeout: float | None = None
    """Seconds a stop waits for the running jobs before it becomes the second signal: Docker and Kubernetes send one
    SIGTERM, then SIGKILL after their grace period, which cost every running job one of its retries."""

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        self._keep_sigint_ignored()

    def request_stop(self, signum, frame):
        for slot in self.slots:
            slot._stop_requested = True
        first = not self._stop_requested
        try:
            super().request_stop(signum, frame)  # first of all, it makes a second signal the forced stop
        finally:
            self._keep_sigint_ignored()
            context = worker_context.installed()
            if context is not None:  # a stop wins over a move to another run, asked or not yet asked
                context.stopping, context.moving_to = True, None
            if first:  # RQ says nothing at our log level: the worker seemed to ignore Ctrl-C
                log.warning("worker %s: stopping once its running jobs are done (a second stop signal stops it now, releasing "
                            "them%s)", self.name, f"; sent in {self.stop_timeout:g} s" if self.stop_timeout is not None else "")
                if self.stop_timeout is not None:
                    timer = threading.Timer(self.stop_timeout, self._stop_now_if_busy)
                    timer.daemon = True
                    timer.start()

    def _stop_now_if_busy(self) -> None:
        """`stop_timeout` after the first stop: the second, if a job still runs. Not once they are done: the models may
        be shutting down then, which a second signal would cut short (and the exit code with it)."""
        if any(worker.get_state() == WorkerStatus.BUSY for worker in (self, *self.slots)):
            os.kill(os.getpid(), signal.SIGTERM)

    def _keep_sigint_ignored(self) -> None:
        if self.sigint_ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def request_force_stop(self, signum, frame):
        """A second Ctrl-C or SIGTERM ends the process at once, even while it waits for a Redis that went away
        (RQ's own cold shutdown would wait for Redis too). The jobs it leaves are released first, so that the
        coordinator's next sweep requeues them instead of waiting out their heartbeat TTL, without using one of their
        retries: being stopped is not the job's failure (a preemptible machine may stop many times)."""
        log.warning("worker %s: second stop signal, exiting now", self.name)
        self._release_running_jobs()
        exit_now(signum)

    def _release_running_jobs(self, timeout: float = defaults.RELEASE_TIMEOUT) -> None:
        """Marks this process's running jobs as abandoned and its job loops as dead, now; bounded in time, since Redis
        may be what went away."""
        def release() -> None:
            with self.connection.pipeline() as pipe:
                for worker in (self, *self.slots):
                    execution, job = worker.execution, worker.get_current_job()
                    if execution is not None and job is not None:
                        claim_for(self.connection, job.started_job_registry.key, execution.composite_key, 0, pipe)
                        job.retries_left = (job.retries_left or 0) + 1  # the one the sweep's requeue takes
                        job.save(pipeline=pipe, include_meta=False)
                pipe.execute()
            for worker in (self, *self.slots):  # gone from `rsample status` and rq-dashboard at once
                worker.register_death()

        def guarded() -> None:
            try:
                release()
            except Exception as exc:  # Redis away: the heartbeat TTL will do it
                log.debug("could not release the running jobs: %s", exc)

        thread = threading.Thread(target=guarded, name="rsample-release", daemon=True)
        thread.start()
        thread.join(timeout)


def exit_now(signum: int) -> NoReturn:
    """Ends the process without Python's exit hooks, which would join a vLLM engine process that nothing stopped:
    that process is told to stop (SIGTERM) first."""
    signal_pids(descendants_to_stop(os.getpid()), signal.SIGTERM)
    logging.shutdown()
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_signals_exit_now(while_: str = "the models shut down"):
    """While the models load or shut down, no job is held, so nothing is lost by ending the process at once, its engine
    told too. Raising instead fails: RQ's StopRequested in the middle of a shutdown leaves an engine running, which keeps
    the process from exiting; and while vLLM waits for its engine to start, pyzmq's poll swallows the exception a
    handler raises (the worker went on to serve)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        log.warning("stop signal while %s: exiting now", while_)
        exit_now(signum)

    handled = [signal.SIGTERM] + ([] if MainWorker.sigint_ignored else [signal.SIGINT])
    before = {signum: signal.signal(signum, on_signal) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: one C code installed


def run_slots(make_worker, slots: int, burst: bool) -> None:
    """Runs `slots` job loops in this process: slot 0 on the main thread, the others on threads."""
    main = make_worker(MainWorker, 0)
    main.slots = tuple(make_worker(SlotWorker, index) for index in range(1, slots))
    threads = [
        threading.Thread(target=slot.work, kwargs={"burst": burst, "with_scheduler": False, "logging_level": "WARNING"},
                         name=f"rsample-slot-{index}", daemon=True)
        for index, slot in enumerate(main.slots, start=1)
    ]
    for thread in threads:
        thread.start()
    try:
        main.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        for slot in main.slots:
            slot._stop_requested = True
        for thread in threads:  # a slot finishes its job; an idle one notices the stop at its next poll
            thread.join()


def default_slots(role: str, models: ModelSettings, rewards: list[str] = ()) -> int:
    """Jobs a worker runs at once. Two keep a vLLM engine fed across batch tails. On a GPU, a transformers reward
    model's slots tokenize the next jobs while the device runs the current ones, which it pools into rounds
    (`ScoringRounds`): more jobs waiting, fewer and fuller batches. On a CPU the CPU is the device: a second slot
    would only take cores from the model; nor do `rewards` (those this worker serves) that load no model need one.
    A worker of both roles runs one job at a time: the straight line, through the queues."""
    if role == "generate":
        return 2 if models.generation_backend == "vllm" else 1
    if role == "reward" and models.reward_backend == "transformers" and any(model_path(spec) for spec in rewards):
        from rsample.workers.backends.models import resolve_device

        return defaults.REWARD_SLOTS_ON_GPU if resolve_device() == "cuda" else 1
    return 1


def follow_the_runs(client, context: worker_context.WorkerContext, role: str, exit_for_other_models: bool,
                    allowed: Callable[[RunConfig], RunConfig]) -> threading.Thread:
    """Once `run_state.move_from` names another run (this one is finished, or nothing feeds it while another run is
    fed): to a run whose models are this worker's (`RunConfig.models_of`), the worker moves in this process, its models
    kept: `context.moving_to` ends its job loops between two jobs, and `serve` takes the run up. To one of other models
    a worker started without --run exits, as after SIGTERM, and whatever restarts it (Docker, Kubernetes, systemd)
    starts it again for that run; a supervised one goes on watching (the runs may change again before `rsample
    workers`, which watches them too, starts it again). A worker told to stop never moves."""
    import redis

    from rsample.workers.runtime.run_state import RunGone, load_run, move_from

    current = context.config

    def watch() -> None:
        said = unreadable = None
        while not context.stopping:
            time.sleep(defaults.RUN_CHECK_SECONDS)
            try:
                move = move_from(client, current.run_id)
                following = allowed(load_run(client, move.run_id)) if move is not None else None
            except redis.RedisError:  # Redis away: asked again
                continue
            except RsampleError as exc:  # the run's settings gone meanwhile, or unreadable here (another version's): asked again
                if not isinstance(exc, RunGone) and unreadable != str(exc):
                    log.warning("%s; this worker stays where it is", exc)
                    unreadable = str(exc)
                continue
            if move is None or context.stopping:
                continue
            if following.models_of(role) == current.models_of(role):
                log.warning("%s: this worker moves to run %s with the models it holds, once its running jobs are done",
                            move.reason, move.run_id)
                context.moving_to = following
                return
            if exit_for_other_models:
                log.warning("%s: this worker exits, to be started again for run %s (another run's models)", move.reason, move.run_id)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if said != move.run_id:
                log.warning("%s: run %s needs other models; this worker waits to be started again for it", move.reason, move.run_id)
                said = move.run_id

    thread = threading.Thread(target=watch, name="rsample-run-watch", daemon=True)
    thread.start()
    return thread


def _wait_for_a_run(client, any_run: bool) -> None:
    """Until this Redis holds a run not yet finished (`any_run`: a run at all, as `--burst` takes the newest): a worker
    loaded the models of a finished run, to serve nothing, and then exited to be started again for the next run's."""
    from rsample.workers.runtime.run_state import list_run_ids, run_to_serve

    def found() -> bool:
        return bool(list_run_ids(client)) if any_run else run_to_serve(client) is not None

    if not found():
        log.info("waiting for a run: this Redis holds none %s (start one with `rsample enqueue`)", "yet" if any_run else "not yet finished")
        while not found():
            time.sleep(defaults.RUN_CHECK_SECONDS)


def worker_name(role: str) -> str:
    """Unique also across restarts of one container: its hostname and PID are the same each time, and RQ refused a worker
    named as one that died uncleanly (OOM-killed, `docker kill`) while that one's key lived on (up to two minutes)."""
    return f"rsample-{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def pin_gpu(gpu: str | None) -> None:
    """Must run before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation."""
    if gpu is not None:
        from rsample.workers.runtime.gpu_ids import parse_gpu_option, pinned_devices

        os.environ["CUDA_VISIBLE_DEVICES"] = pinned_devices(parse_gpu_option(gpu))
        # as `rsample workers` says it (silently slow otherwise), without asking CUDA: a process that has called into
        # the CUDA driver cannot hand it on to the engine processes vLLM forks
        if not os.environ["CUDA_VISIBLE_DEVICES"] or not glob.glob("/dev/nvidia[0-9]*"):
            log.warning("--gpu %s: this machine shows no GPU (CUDA_VISIBLE_DEVICES=%s): the worker runs on its CPU", gpu,
                        os.environ["CUDA_VISIBLE_DEVICES"])


def serve(role: str, redis_url: str, run_id: str | None = None, gpu: str | None = None,
          reward_model_indices: list[int] | None = None, burst: bool = False, slots: int | None = None,
          allow_functions: tuple[str, ...] = (), trust_remote_code: tuple[str, ...] = (), follow: bool = False,
          wait_for_redis: float = 0, stop_timeout: float | None = None) -> None:
    """`allow_functions`: the `fn:` rewards this worker may import, besides installed `rsample.rewards` entry points.
    `trust_remote_code`: the models whose repository code this worker lets run, of those the run names. `follow`: with
    `run_id`, move on with the runs afterwards as a worker without one does, to runs of the same models (the workers of
    `rsample workers`, whose supervisor starts them again for other models). `wait_for_redis`: seconds a Redis that
    cannot be reached is waited for at the start (`rsample run` starts its workers with it: a Redis restarting then
    is no reason to end the run). `stop_timeout`: seconds after a stop signal before a second one is sent, which
    releases the running jobs without using their retries (`MainWorker.stop_timeout`)."""
    pin_gpu(gpu)
    from rq.serializers import JSONSerializer

    from rsample.workers.backends.functions import allowed_functions
    from rsample.workers.backends.registry import load_generator, load_reward_backend
    from rsample.workers.backends.reward_specs import same_model
    from rsample.workers.runtime.connection import connect
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import load_run, run_to_serve
    from rsample.workers.runtime.safe_job import SafeJob

    if role not in WORKER_ROLES:
        raise RsampleError(f"unknown worker role {role!r} (use {' or '.join(WORKER_ROLES)})")
    if slots is not None and slots < 1:
        raise RsampleError(f"--slots must be at least 1 (got {slots})")
    MainWorker.sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # before anything installs a handler
    MainWorker.stop_timeout = stop_timeout
    take_cpu_share()
    client = connect(redis_url, wait_seconds=wait_for_redis)
    if run_id is None:  # started before any run, as `rsample workers` may be, or once they are finished: it waits
        _wait_for_a_run(client, any_run=burst)

    def allowed(config: RunConfig) -> RunConfig:  # the models whose code runs: the run's, of those this worker allows
        return dataclasses.replace(config, trust_remote_code=tuple(
            model for model in config.trust_remote_code if any(same_model(model, given) for given in trust_remote_code)))

    config = allowed(load_run(client, run_id or run_to_serve(client)))  # the run `follow_the_runs` would move to
    pin_run_date(config.created_at)
    context = worker_context.WorkerContext(client=client, config=config, role=role, adopt=allowed)
    try:
        started = time.perf_counter()
        indices = config.served_reward_models(reward_model_indices) if role in ("reward", "both") else []
        with stop_signals_exit_now("the models load"):
            for index in indices:
                context.reward_models[index] = load_reward_backend(config, index, allowed_functions(allow_functions))
            if indices:
                log.info("loaded reward models %s in %.1f s", [config.reward_models[i] for i in indices], time.perf_counter() - started)
            if role in ("generate", "both"):
                context.generator = load_generator(config)
                log.info("loaded policy %s in %.1f s", config.policy, time.perf_counter() - started)
        slots = slots or default_slots(role, config.models, [config.reward_models[i] for i in indices])
        base_name = worker_name(role)
        while True:
            keys = RunKeys(config.run_id)
            # scoring queues first: a batch generated is scored before the next is generated
            functions = [keys.score_queue(i) for i in indices if is_function(config.reward_models[i])]  # the main thread's alone: first
            queues = functions + [keys.score_queue(i) for i in indices if keys.score_queue(i) not in functions] + (
                [keys.generate_queue] if context.generator is not None else [])
            threaded = [queue for queue in queues if queue not in functions]
            worker_context.install(context)

            def make_worker(worker_class, index: int) -> HeartbeatWorker:
                worker = worker_class(
                    queues if index == 0 else threaded, connection=client, serializer=JSONSerializer, job_class=SafeJob,
                    name=base_name if index == 0 else f"{base_name}{SLOT_SUFFIX}{index}",
                    maintenance_interval=defaults.WORKER_MAINTENANCE_INTERVAL, worker_ttl=defaults.WORKER_TTL,
                )
                worker.heartbeat_ttl = context.config.jobs.heartbeat_ttl
                return worker

            log.info("worker %s serving run %s on %s with %d slot(s)", base_name, config.run_id, ", ".join(queues), slots if threaded else 1)
            if (run_id is None or follow) and not burst:
                follow_the_runs(client, context, role, exit_for_other_models=run_id is None, allowed=allowed)
            run_slots(make_worker, slots if threaded else 1, burst)
            if context.broken:
                raise RsampleError(f"worker stopped after {context.broken_cause}: {context.broken}")
            if context.moving_to is None or context.stopping:  # stopped by a signal, or a burst is done
                return
            config = context.moving_to
            pin_run_date(config.created_at)
            context = worker_context.WorkerContext(client=client, config=config, generator=context.generator,
                                                   reward_models=context.reward_models, role=role, adopt=allowed)
    finally:  # a vLLM engine nobody shuts down keeps this process from exiting, and its GPU memory held
        with stop_signals_exit_now():
            context.close_models()
