"""What both benchmarks share: a private Redis, a registered run, worker processes that are ready
(models loaded) before the clock starts, and a timed coordinator that feeds the run and writes it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rq import Worker

from rsample.producer.driver.coordinator import Coordinator
from rsample.producer.driver.local_run import WorkerProcesses
from rsample.producer.registration import register_run
from rsample.workers.common.config import RunConfig
from rsample.workers.runtime.connection import connect
from rsample.workers.runtime.embedded_redis import EmbeddedRedis
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.run_state import read_stats

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PipelineResult:
    seconds: float
    """From the first prompt fed to the last row written, workers already loaded."""
    completions: int
    tokens: int
    pairs: int
    redis_peak_bytes: int
    redis_end_bytes: int
    """What Redis still holds once the run is written: what a run leaves behind (settings, counters)."""
    generation_seconds: float
    """Time the generation workers spent inside the backend: the rest of `seconds` is the queue path's."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def completions_per_second(self) -> float:
        return self.completions / self.seconds


def write_prompts(path: Path, count: int, words: int = 6) -> Path:
    vocabulary = "river city music story poem science code test".split()
    with path.open("w") as handle:
        for i in range(count):
            text = " ".join(vocabulary[(i + k) % len(vocabulary)] for k in range(words))
            handle.write(json.dumps({"prompt": f"write about {text} number {i}"}) + "\n")
    return path


def wait_until_ready(client, queue_names: list[str], processes: WorkerProcesses, timeout: float = 900) -> None:
    """A worker registers with RQ only once its models are loaded: wait for every one of them."""
    deadline = time.monotonic() + timeout
    for name in queue_names:
        queue = make_queue(client, name)
        expected = sum(1 for role, _, _ in processes.processes if (role == "generate") == name.endswith("-generate"))
        while Worker.count(queue=queue) < expected:
            processes.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers of {name} not ready after {timeout} s")
            time.sleep(0.2)


def run_pipeline(config: RunConfig, workdir: Path, generate_workers: int = 1, worker_args: tuple[str, ...] = ()) -> PipelineResult:
    """Runs `config` through Redis, worker processes and the coordinator; only the feeding and writing is timed."""
    with EmbeddedRedis(data_dir=workdir / "redis") as server:
        client = connect(server.url)
        config, _ = register_run(client, config)
        keys = RunKeys(config.run_id)
        processes = WorkerProcesses(server.url, config.run_id, workdir / "logs")
        try:
            for _ in range(generate_workers):
                processes.start("generate", *worker_args)
            processes.start("reward")
            wait_until_ready(client, keys.all_queues(len(config.reward_models)), processes)
            coordinator = Coordinator(client, config, workdir / "pairs.jsonl")
            started = time.perf_counter()
            coordinator.run(check=processes.check_alive)
            seconds = time.perf_counter() - started
        finally:
            processes.stop()
        stats = read_stats(client, config.run_id)
        outcomes, _ = coordinator.ledger.counts()
        memory = client.info("memory")
    return PipelineResult(seconds, int(stats.get("completions_generated")), int(stats.get("tokens_generated")), outcomes["pair"],
                          int(memory["used_memory_peak"]), int(memory["used_memory"]), stats.get("generation_seconds"))
