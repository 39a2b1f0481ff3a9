"""`rsample run`: the whole pipeline on one machine, with the same processes a cluster would run.

Starts an embedded Redis (unless given a URL), registers the run, starts one generation worker and
one reward worker as child processes, and coordinates (feeds prompts, writes results) in this process
with progress bars. Re-running the same command resumes from the output files.
"""

from __future__ import annotations

import logging
import os
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from rsample.producer.driver.coordinator import Coordinator
from rsample.producer.driver.ledger import check_outputs
from rsample.producer.driver.summary import Summary
from rsample.producer.registration import dataset_files, register_run, run_id_for, with_created_at_of
from rsample.workers.backends.registry import ZERO_COST_GENERATION, ZERO_COST_REWARD
from rsample.workers.common import defaults
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.connection import REDIS_URL_ENV, connect
from rsample.workers.runtime.cpu_share import local_worker_roles, machine_has_gpu, sharing_environment
from rsample.workers.runtime.embedded_redis import EmbeddedRedis
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.log_relay import LogRelay
from rsample.workers.runtime.processes import RSAMPLE_COMMAND, Lineage, describe_exit, kill_with_descendants, killed_with_parent, last_words
from rsample.workers.runtime.progress import StageBars
from rsample.workers.runtime.run_state import expire_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRunOptions:
    out: Path
    scores_out: Path | None = None
    sft_out: Path | None = None
    redis_url: str | None = None
    generate_workers: int = 1
    allow_functions: tuple[str, ...] = ()
    """The `fn:` rewards this machine's workers may import: named on this command line, never read from Redis."""
    trust_remote_code: tuple[str, ...] = ()
    """The models whose repository code this machine's workers may run: named on this command line too."""
    progress: bool = True
    overwrite: bool = False
    retry_failed: bool = False
    """Produce again the rows that the output files record as skipped because their work failed."""
    parquet: bool = False
    """Typed Parquet copies of the outputs are written at the end (checked here, before any work)."""


class WorkerProcesses:
    """Worker child processes with their logs in files; a dead worker stops the run with its last words."""

    def __init__(self, redis_url: str, run_id: str, log_dir: Path):
        self.redis_url = redis_url
        self.run_id = run_id
        self.log_dir = log_dir
        self.sharing_cpu: int | None = None
        """How many workers share this machine's cores, when it has no GPU (see `cpu_share`)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[tuple[str, subprocess.Popen, Path]] = []
        self.lineages: dict[int, Lineage] = {}
        """What each worker started (its vLLM engine), stopped when the worker is gone without stopping it."""
        self.relays: dict[Path, LogRelay] = {}

    def start(self, role: str, *options: str) -> None:
        """`options` are extra `rsample worker` options, such as `--slots 2`."""
        log_path = self.log_dir / f"{role}-{len(self.processes)}.log"
        # the URL goes by environment (not in `ps`); the coordinator reached Redis, so a worker that cannot yet waits
        command = [*RSAMPLE_COMMAND, "worker", role, "--run", self.run_id, "--wait-for-redis", str(defaults.LOCAL_WORKER_REDIS_WAIT),
                   *options]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", REDIS_URL_ENV: self.redis_url}
        if self.sharing_cpu:
            env.update(sharing_environment(self.sharing_cpu))
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                preexec_fn=killed_with_parent,  # a killed `rsample run` leaves no orphan workers behind
            )
        self.processes.append((role, process, log_path))

    def start_for_run(self, config: RunConfig, generate_workers: int, *options: str) -> list[str]:
        """The workers `rsample run` starts for `config` on this machine (see `local_worker_roles`); returns their roles."""
        roles = local_worker_roles(generate_workers, on_gpu=loads_models(config) and machine_has_gpu())
        self.sharing_cpu = None if "reward" in roles else len(roles)
        for role in roles:
            self.start(role, *options)
        return roles

    def check_alive(self) -> None:
        for role, process, log_path in self.processes:
            for warning in self.relays.setdefault(log_path, LogRelay(log_path)).new_warnings():
                log.warning("%s worker: %s", role, warning)
            code = process.poll()
            if code is None:
                self._lineage(process).look()
                continue
            self._stop_orphans(role, process)
            if code <= 0:  # stopped from outside: its last log line says nothing of why
                how = "stopped (exit code 0: a Ctrl-C or SIGTERM that reached it alone?)" if code == 0 else describe_exit(code)
                raise RsampleError(f"the {role} worker {how} before the run was done; the same command resumes it (log: {log_path})")
            raise RsampleError(f"the {role} worker exited with code {code}: {last_words(log_path)} (log: {log_path})")

    def stop(self, timeout: float = defaults.LOCAL_WORKER_STOP_SECONDS) -> None:
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_with_descendants(process)
                process.wait()
        for role, process, _ in self.processes:
            self._stop_orphans(role, process)

    def _lineage(self, process: subprocess.Popen) -> Lineage:
        return self.lineages.setdefault(process.pid, Lineage(process))

    def _stop_orphans(self, role: str, process: subprocess.Popen) -> None:
        left = self._lineage(process).stop_orphans()
        if left:
            log.warning("the %s worker (pid %d) left processes running; stopped them: %s", role, process.pid, ", ".join(left))


def loads_models(config: RunConfig) -> bool:
    """False for the zero-cost backends alone: then no torch is imported to ask for a GPU."""
    return config.models.generation_backend != ZERO_COST_GENERATION or config.models.reward_backend != ZERO_COST_REWARD


def share_the_gpu(config: RunConfig, explicit_share: bool) -> RunConfig:
    """On a GPU, `rsample run` puts the generation and the reward workers on the same one: a vLLM engine's share of
    its memory must leave the reward models room (unless the command line sets it)."""
    if explicit_share or config.models.generation_backend != "vllm" or not machine_has_gpu():
        return config
    from rsample.producer.driver.gpu_share import engine_share_beside, gpu_memory_bytes

    share = engine_share_beside(config.reward_models, config.models.reward_backend, gpu_memory_bytes())
    log.info("vLLM engine takes %.2f of the GPU's memory, leaving the reward models room (--gpu-memory-utilization)", share)
    return replace(config, models=replace(config.models, gpu_memory_utilization=share))


def run_locally(config: RunConfig, options: LocalRunOptions) -> tuple[RunConfig, Summary]:
    """Runs (or resumes: same settings, same output files) a whole run; returns its settings and summary."""
    check_outputs(config.run_id or run_id_for(config), options.out, options.scores_out, dataset_files(config), options.overwrite,
                  options.sft_out, config.output_settings(), options.parquet, drop_copies=True)
    with ExitStack() as stack:
        redis_url = options.redis_url
        embedded = redis_url is None
        if embedded:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        client = connect(redis_url)
        config, existed = register_run(client, with_created_at_of(config, options.out))  # another run's files: ignored
        coordinator = Coordinator(client, config, options.out, options.scores_out, options.overwrite, options.sft_out,
                                  options.retry_failed)
        stack.callback(coordinator.close)
        done = len(coordinator.ledger.rows)
        if existed or done:
            log.info("resuming run %s: %d rows of the dataset already have their outcome in %s", config.run_id, done, options.out)
        total = int(client.hget(RunKeys(config.run_id).stats, "rows_total") or 0)
        workers = WorkerProcesses(redis_url, config.run_id, options.out.parent / ".rsample-logs" / config.run_id)
        stack.callback(workers.stop)
        if embedded and done < total:  # once the run is settled and checked: an error stays one line
            log.info("embedded Redis at %s: `rsample status --redis-url %s` (or `rsample dashboard --redis-url %s`) watches the run "
                     "from another terminal", redis_url, redis_url, redis_url)
        if done < total:  # nothing to generate: do not load the models at all
            workers.start_for_run(config, options.generate_workers,
                                  *(arg for name in options.allow_functions for arg in ("--allow-reward-fn", name)),
                                  *(arg for model in options.trust_remote_code for arg in ("--trust-remote-code", model)))
        bars = StageBars(client, config.run_id, disable=not options.progress)
        stack.callback(bars.close)
        with logging_redirect_tqdm():
            coordinator.run(on_progress=bars.update, check=workers.check_alive)
        bars.update()
        summary = coordinator.summary()
        expire_run(client, config.run_id)
    return config, summary
