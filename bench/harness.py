"""What the benchmarks share: a private Redis, a registered run, the worker processes `rsample run` would start,
ready (models loaded) before the clock starts, a timed coordinator that feeds the run and writes it, the
straight-line baseline, and a GPU memory watch."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
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
    scoring_seconds: float
    """Time the reward workers spent inside the first reward model's backend (jobs that overlap add up)."""

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
        serving = ("generate", "both") if name.endswith("-generate") else ("reward", "both")
        expected = sum(1 for role, _, _ in processes.processes if role in serving)
        while Worker.count(queue=queue) < expected:
            processes.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers of {name} not ready after {timeout} s")
            time.sleep(0.2)


def greedy_ends(sorted_lengths: list[int], tokens: int, max_sequences: int) -> list[int]:
    """The end of each batch when sequences sorted by length fill a token budget in order, as many as it (or the cap)
    allows: the baselines' batching, independent of rsample's own split."""
    ends, start = [], 0
    while start < len(sorted_lengths):
        end = start + 1
        while end < len(sorted_lengths) and end - start < max_sequences and (end + 1 - start) * sorted_lengths[end] <= tokens:
            end += 1
        ends.append(end)
        start = end
    return ends


def run_pipeline(config: RunConfig, workdir: Path, generate_workers: int = 1, worker_args: tuple[str, ...] = ()) -> PipelineResult:
    """Runs `config` through Redis, worker processes and the coordinator; only the feeding and writing is timed."""
    with EmbeddedRedis(data_dir=workdir / "redis") as server:
        client = connect(server.url)
        config, _ = register_run(client, config)
        keys = RunKeys(config.run_id)
        processes = WorkerProcesses(server.url, config.run_id, workdir / "logs")
        try:
            processes.start_for_run(config, generate_workers, *worker_args)  # as `rsample run`
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
                          int(memory["used_memory_peak"]), int(memory["used_memory"]), stats.get("generation_seconds"),
                          stats.get("scoring_seconds:0"))


def straight_line(config: RunConfig, keep_prompts: int = 0) -> dict:
    """The baseline: one process, no Redis, generating and then scoring batch after batch with the same backends,
    batches and seeds as the pipeline's jobs. `keep_prompts`: the conversations of that many first prompts come
    back too (grouped by prompt), for checks that score them again."""
    from rsample.producer.dataset import iter_rows
    from rsample.producer.prompts import extract_prompt
    from rsample.workers.backends.registry import load_generator, load_reward_backend
    from rsample.workers.runtime.worker_context import close_models
    from rsample.workers.stages.generate import batch_seed

    records = [extract_prompt(row, index) for index, row in iter_rows(config.data)]
    loaded: list = []  # closed whatever happens, even a model that fails to load after another loaded
    generating = scoring = 0.0
    tokens, completions, kept = 0, 0, []
    try:
        loaded.append(generator := load_generator(config))
        for index in range(len(config.reward_models)):
            loaded.append(load_reward_backend(config, index))
        rewards = loaded[1:]
        for start in range(0, len(records), config.prompts_per_job):
            batch = records[start:start + config.prompts_per_job]
            began = time.perf_counter()
            results = generator.generate([record.messages for record in batch], config.sampling, batch_seed(config, batch[0].row_index))
            generated = time.perf_counter()
            groups = [[[*record.messages, {"role": "assistant", "content": c.text}] for c in result.completions]
                      for record, result in zip(batch, results)]
            for reward in rewards:
                reward.score([conversation for group in groups for conversation in group])
            scoring += time.perf_counter() - generated
            generating += generated - began
            tokens += sum(c.num_tokens for result in results for c in result.completions)
            completions += sum(len(result.completions) for result in results)
            kept.extend(groups[:max(0, keep_prompts - len(kept))])
    finally:  # a vLLM engine left running would keep this process from exiting, and the GPU's memory taken
        close_models(loaded)
    return {"seconds": generating + scoring, "generation_seconds": generating, "scoring_seconds": scoring,
            "tokens": tokens, "completions": completions, "conversations": kept}


class GpuMemoryPeak:
    """The highest GPU memory in use (all processes, as nvidia-smi reports it) while the block runs; None without one."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> GpuMemoryPeak:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            reading = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True)
            if reading.returncode == 0 and reading.stdout.strip():
                used = int(reading.stdout.split()[0])
                self.peak_mib = max(self.peak_mib or 0, used)
            self._stop.wait(self.interval)


def agreement(first: list[float], second: list[float], group_sizes: list[int]) -> dict:
    """How close two scorings of the same candidates are (`second` the reference), and whether they pick the same:
    the best and the worst candidate of each prompt (`group_sizes`: candidates per prompt, in order), and the order
    of each pair of candidates of a prompt that the reference does not tie."""
    import torch

    a_all, b_all = torch.tensor(first, dtype=torch.float64), torch.tensor(second, dtype=torch.float64)
    same_best = same_worst = pairs = pairs_agree = position = 0
    for size in group_sizes:
        a, b = a_all[position:position + size], b_all[position:position + size]
        position += size
        same_best += int(a.argmax() == b.argmax())
        same_worst += int(a.argmin() == b.argmin())
        for i in range(size):
            for j in range(i + 1, size):
                if b[i] != b[j]:  # a tie in the reference has no order to agree with
                    pairs += 1
                    pairs_agree += int((a[i] - a[j]) * (b[i] - b[j]) > 0)
    difference = (a_all - b_all).abs()
    return {
        "prompts": len(group_sizes), "pearson": float(torch.corrcoef(torch.stack([a_all, b_all]))[0, 1]),
        "max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()), "reference_std": float(b_all.std()),
        "same_best": same_best, "same_worst": same_worst, "pair_order_agreement": pairs_agree / max(1, pairs),
    }
