"""`rsample run`: the whole pipeline on one machine, with the same processes a cluster would run.

Starts an embedded Redis (unless given a URL), enqueues the dataset, starts one generation worker
and one reward worker as child processes, and aggregates in this process with progress bars.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from producer.enqueue import create_run
from workers.aggregator import Aggregator
from workers.config import RunConfig
from workers.connection import connect
from workers.embedded_redis import EmbeddedRedis
from workers.errors import RsampleError
from workers.progress import StageBars
from workers.runs import expire_run, read_stats
from workers.summary import Summary, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRunOptions:
    out: Path
    scores_out: Path | None = None
    redis_url: str | None = None
    generate_workers: int = 1
    progress: bool = True


class WorkerProcesses:
    """Worker child processes with their logs in files; a dead worker stops the run with its last words."""

    def __init__(self, redis_url: str, run_id: str, log_dir: Path):
        self.redis_url = redis_url
        self.run_id = run_id
        self.log_dir = log_dir
        self.processes: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, role: str) -> None:
        log_path = self.log_dir / f"{role}-{len(self.processes)}.log"
        command = [sys.executable, "-m", "workers.cli", "worker", role, "--redis-url", self.redis_url, "--run", self.run_id]
        with log_path.open("w") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.processes.append((role, process, log_path))

    def check_alive(self) -> None:
        for role, process, log_path in self.processes:
            code = process.poll()
            if code is not None:
                raise RsampleError(f"the {role} worker exited with code {code}: {last_words(log_path)} (log: {log_path})")

    def stop(self, timeout: float = 15.0) -> None:
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for _, process, _ in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def last_words(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


def run_locally(config: RunConfig, options: LocalRunOptions) -> tuple[RunConfig, Summary]:
    with ExitStack() as stack:
        redis_url = options.redis_url
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        client = connect(redis_url)
        config = create_run(client, config)
        log_dir = options.out.parent / ".rsample-logs" / config.run_id
        log_dir.mkdir(parents=True, exist_ok=True)
        workers = WorkerProcesses(redis_url, config.run_id, log_dir)
        stack.callback(workers.stop)
        for _ in range(options.generate_workers):
            workers.start("generate")
        workers.start("reward")
        bars = StageBars(client, config.run_id, disable=not options.progress)
        stack.callback(bars.close)
        with logging_redirect_tqdm():
            Aggregator(client, config, options.out, options.scores_out).run(on_progress=bars.update, check=workers.check_alive)
        bars.update()
        summary = summarize(read_stats(client, config.run_id), config.created_at)
        expire_run(client, config.run_id)
    return config, summary
