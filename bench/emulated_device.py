"""The reward worker's host path at a GPU's speed, measured on any machine: a reward model whose forward pass is
an emulated device (it sleeps padded tokens / --rate seconds, the GIL released as while a GPU computes, after a
few milliseconds of Python work holding it, as launching a pass's kernels does), behind the real worker, Redis,
queues, rendering, tokenization and scoring rounds.

    python bench/emulated_device.py                       # H200-like: 114,000 tokens/s (bench/results), 5 ms per launch
    python bench/emulated_device.py --rate 30000 --launch-ms 2
    python bench/emulated_device.py --overlap                # as a GPU's stream: 700 ops a pass, each letting go of the GIL
    RSAMPLE_RENDER_PROCESSES=2 python bench/emulated_device.py --overlap   # the worker renders in 2 processes of its own

(a) the device alone: the same conversations tokenized and globally sorted into greedy token-budget batches, their
emulated time summed (what the direct loop of `reward_throughput.py` measures on a real GPU). (b) the pipeline: the
zero-cost echo generator and a reward worker whose model is the emulated device, timed from the first prompt fed
to the last pair written. (b)/(a) below 1 is what the host path costs; the worker's rounds line says where.
`python bench/emulated_device.py worker ...` is the worker entry the pipeline starts (the emulated model swapped in).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RATE_ENV, LAUNCH_ENV, OVERLAP_ENV = "RSAMPLE_EMULATED_TOKENS_PER_S", "RSAMPLE_EMULATED_LAUNCH_MS", "RSAMPLE_EMULATED_OVERLAP"


OPS_PER_PASS = 700
"""Kernels a Llama-3.2-1B-shaped forward pass launches in transformers (about 45 a layer, 16 layers)."""
STREAM_DEPTH = 1024
"""Launches a CUDA stream holds before the next one blocks the host."""
RELEASING_CALL = b"x" * 8192
"""Hashing it lets go of the GIL for a few microseconds (hashlib does for data over 2 KiB), as PyTorch's op does
around a kernel's dispatch and launch."""


def launch_op() -> None:
    hashlib.sha256(RELEASING_CALL)


def op_seconds(samples: int = 5) -> float:
    """One launch call's time here, the best of `samples` passes' worth (one sample may be preempted)."""
    best = float("inf")
    for _ in range(samples):
        began = time.perf_counter()
        for _ in range(OPS_PER_PASS):
            launch_op()
        best = min(best, time.perf_counter() - began)
    return best / OPS_PER_PASS


def launch_steps(seconds: float) -> int:
    """Loop steps that take `seconds` on this machine with the GIL to themselves: launching is work, not a wait."""
    steps = 200_000
    began = time.perf_counter()
    for _ in range(steps):
        pass
    return max(1, int(steps * seconds / (time.perf_counter() - began)))


def emulated_reward_model_class():
    """Defined on first use: the worker entry imports this module before it swaps the class into the registry."""
    from rsample.workers.backends.batching import TokenBudget
    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.render_processes import make_renderer
    from rsample.workers.backends.scoring_rounds import ScoringRounds
    from rsample.workers.backends.transformers_reward import TransformersRewardModel

    class EmulatedRewardModel(TransformersRewardModel):
        """The transformers reward backend (rendering, tokenizing, scoring rounds) with a sleep for a forward pass."""

        def __init__(self, spec: str, models):
            self.rate, self.launch = float(os.environ[RATE_ENV]), float(os.environ[LAUNCH_ENV]) / 1000
            self.overlap = os.environ.get(OVERLAP_ENV) == "1"
            self.tokenizer = load_tokenizer(spec, "reward")
            self.context = 10**9
            self.pad_token_id = None  # the sequences as rendered
            budget = TokenBudget(models.reward_token_budget, models.reward_micro_batch, models.reward_pass_cost)
            self.rounds = ScoringRounds(budget, self._overlapped if self.overlap else self._forward, self._read)
            self.renderer = make_renderer(spec, self.tokenizer, False, None)  # in processes where $RSAMPLE_RENDER_PROCESSES says
            self.gpu_free_at = 0.0
            self.steps_per_op = launch_steps(max(0.0, self.launch / OPS_PER_PASS - op_seconds()))

        def _read(self, per_batch):
            self._wait_for_gpu()  # reading the scores waits for the device
            return [v for batch in per_batch for v in batch]

        def _wait_for_gpu(self):
            wait = self.gpu_free_at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # the GIL released, as while waiting for a GPU; taken back after, against the slots

        def _overlapped(self, batch):
            """A GPU's stream: the pass is launched as `OPS_PER_PASS` ops, each Python work holding the GIL and then a
            call that lets go of it (a thread that wants the GIL takes it then, and the launching thread waits for
            it back, up to the interpreter's switch interval), and each queues its share of the pass's work behind
            what the device still runs; a launch waits, the GIL let go, while the stream is full. Nothing reads
            the device back before the round ends (the worker passes no attention mask to a decoder)."""
            share = len(batch) * max(len(ids) for ids in batch) / self.rate / OPS_PER_PASS
            for _ in range(OPS_PER_PASS):
                for _ in range(self.steps_per_op):
                    pass
                launch_op()
                now = time.perf_counter()
                full = self.gpu_free_at - STREAM_DEPTH * share - now
                if full > 0:
                    time.sleep(full)
                    now = time.perf_counter()
                self.gpu_free_at = max(self.gpu_free_at, now) + share
            return [0.0] * len(batch)

        @classmethod
        def from_run(cls, config, model_index: int):
            return cls(config.reward_models[model_index], config.models)

        def _forward(self, batch):
            spin_until = time.perf_counter() + self.launch
            while time.perf_counter() < spin_until:  # Python work holding the GIL, as a pass's kernel launches
                pass
            time.sleep(len(batch) * max(len(ids) for ids in batch) / self.rate)
            return [0.0] * len(batch)

    return EmulatedRewardModel


def parse_args(argv=None) -> argparse.Namespace:
    from rsample.workers.common import defaults

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=114_000, help="the emulated device's padded tokens per second")
    parser.add_argument("--launch-ms", type=float, default=5.0,
                        help="host time a pass's launches take, in ms: Python holding the GIL (with --overlap, spread over "
                             f"{OPS_PER_PASS} ops that each let go of it once)")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-words", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=defaults.PROMPTS_PER_JOB, help="prompts per job")
    parser.add_argument("--pass-cost", type=int, default=defaults.REWARD_PASS_COST)
    parser.add_argument("--token-budget", type=int, default=defaults.REWARD_TOKEN_BUDGET)
    parser.add_argument("--max-sequences", type=int, default=defaults.REWARD_MICRO_BATCH)
    parser.add_argument("--overlap", action="store_true",
                        help="a GPU's stream: launches overlap the device's work, one wait per round")
    parser.set_defaults(dtype="float32")
    parser.add_argument("--worker-slots", type=int, help=f"jobs the reward worker holds at once (default: {defaults.REWARD_SLOTS_ON_GPU}, as on a GPU)")
    return parser.parse_args(argv)


def device_alone(args, config) -> tuple[float, int]:
    """(seconds, tokens) of the emulated device over every conversation, globally sorted, greedy batches."""
    from harness import greedy_ends
    from reward_throughput import conversations

    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.templates import render_conversations

    encoded = sorted(render_conversations(load_tokenizer(config.reward_models[0], "reward"), conversations(config)), key=len)
    lengths = [len(ids) for ids in encoded]
    ends = greedy_ends(lengths, config.models.reward_token_budget, config.models.reward_micro_batch)
    passes = [(end - start) * lengths[end - 1] / args.rate for start, end in zip([0, *ends], ends)]
    launch = args.launch_ms / 1000
    seconds = sum(max(launch, work) for work in passes) if args.overlap else sum(passes) + launch * len(passes)
    return seconds, sum(len(ids) for ids in encoded)


def main(argv=None) -> None:
    args = parse_args(argv)
    shortest = OPS_PER_PASS * op_seconds() * 1000
    if args.overlap and args.launch_ms < shortest:  # the emulation would launch slower than the device alone is charged
        sys.exit(f"--launch-ms {args.launch_ms} is shorter than {OPS_PER_PASS} of this machine's GIL-releasing calls "
                 f"({shortest:.1f} ms): give at least {shortest * 1.5:.1f}")
    from harness import run_pipeline
    from reward_throughput import make_config, rounds_line, write_prompts

    from rsample.producer.driver import local_run
    from rsample.workers.backends.tiny_models import build_reward_model
    from rsample.workers.common import defaults

    os.environ[RATE_ENV], os.environ[LAUNCH_ENV], os.environ[OVERLAP_ENV] = str(args.rate), str(args.launch_ms), str(int(args.overlap))
    local_run.RSAMPLE_COMMAND = (sys.executable, str(Path(__file__).resolve()))  # workers with the emulated model
    local_run.machine_has_gpu = lambda: True  # the GPU layout: a generation worker and a reward worker
    slots = ("--slots", str(args.worker_slots or defaults.REWARD_SLOTS_ON_GPU))
    with tempfile.TemporaryDirectory(prefix="rsample-emulated-") as tmp:
        workdir = Path(tmp)
        write_prompts(workdir / "prompts.jsonl", args.prompts, args.max_words)
        reward = str(build_reward_model(workdir / "reward"))  # its tokenizer only
        config = make_config(args, workdir, reward)
        a, tokens = device_alone(args, config)
        result = run_pipeline(config, workdir / "pipeline", worker_args=slots)
        rounds = rounds_line(workdir / "pipeline" / "logs")
    print(f"emulated device: {args.rate:,.0f} padded tokens/s, {args.launch_ms} ms of Python per pass"
          f"{' overlapping the device' if args.overlap else ''}; {args.prompts} prompts "
          f"x n={args.n} ({tokens} tokens), {args.batch_size} prompts per job, pass cost {args.pass_cost}, {slots[1]} reward slots")
    print(f"{'side':<44}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'(a) the device alone, globally sorted':<44}{a:>10.2f}{tokens / a:>12.0f}")
    print(f"{'(b) reward worker, job by job through Redis':<44}{result.seconds:>10.2f}{tokens / result.seconds:>12.0f}")
    print(f"ratio (b)/(a): {a / result.seconds:.3f}; (b) {rounds}")
    print(json.dumps({"rate": args.rate, "launch_ms": args.launch_ms, "tokens": tokens, "device_seconds": round(a, 3),
                      "worker_seconds": round(result.seconds, 3), "ratio": round(a / result.seconds, 3)}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        from rsample.producer.cli import main as cli
        from rsample.workers.backends import registry

        sys.modules.setdefault("emulated_device", sys.modules[__name__])
        EmulatedRewardModel = emulated_reward_model_class()
        registry.REWARD_BACKENDS["transformers"] = f"{__name__}:EmulatedRewardModel"
        cli(sys.argv[1:])
    else:
        main()
