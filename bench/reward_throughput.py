"""Reward scoring throughput: tokens/s the reward worker reads, against a direct loop over the same conversations.

    python bench/reward_throughput.py                           # CPU: a small random Llama reward model
    python bench/reward_throughput.py --shape llama-3.2-1b      # a GPU: a Llama-3.2-1B-shaped random model in bf16

(a) direct: one process tokenizes every conversation up front, sorts them all by length and runs token-budget
batches through the model (transformers called directly, not rsample's backend): the hardware's best case,
only the forward passes timed. (b) worker: the zero-cost echo generator hands conversations of the same lengths
through Redis to the workers `rsample run` starts (on a GPU a reward worker; on a CPU one worker of both roles),
which render, tokenize, batch and score them job by job; timed from the first prompt fed to the last pair
written. Both read the same tokens. Target: (b)/(a) >= 0.90.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import REPO, GpuMemoryPeak, greedy_ends, run_pipeline

from rsample.workers.backends.device_clock import pass_clock
from rsample.workers.common import defaults
from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig, SamplingConfig


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["cpu-small", "llama-3.2-1b"], default="cpu-small")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=160, help="prompt lengths are spread between 8 and this many words")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per job")
    parser.add_argument("--token-budget", type=int, default=defaults.REWARD_TOKEN_BUDGET)
    parser.add_argument("--max-sequences", type=int, default=defaults.REWARD_MICRO_BATCH)
    parser.add_argument("--pass-cost", type=int, default=defaults.REWARD_PASS_COST,
                        help="the worker's batch split: a pass's fixed cost in padded tokens (--reward-pass-cost)")
    parser.add_argument("--worker-slots", type=int, help="jobs the reward worker runs at once (default: the worker's own choice)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--pass-costs", action="store_true", help="also time single passes of a few shapes (the device's cost of a pass)")
    parser.add_argument("--busy-threads", type=int, default=0,
                        help="(a) runs its passes a second time while this many threads render chat templates one at a time, "
                             "as the worker's slots do: the host's contention (the GIL, and the cores the tokenizer takes)")
    parser.add_argument("--render-processes", type=int, default=0,
                        help="(b) runs a second time with the worker's templates rendered in this many processes of their "
                             "own ($RSAMPLE_RENDER_PROCESSES), right after the first")
    parser.add_argument("--repeats", type=int, default=2, help="alternate (a) and (b) this many times; the best of each counts")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--side", choices=["direct"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_prompts(path: Path, count: int, max_words: int) -> Path:
    """Prompts of spread-out lengths (log-uniform), as real datasets have; the echo completions repeat them."""
    from rsample.workers.backends.tiny_models import WORDS

    rng = random.Random(0)
    with path.open("w") as handle:
        for _ in range(count):
            words = int(round(8 * (max_words / 8) ** rng.random()))
            handle.write(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(words))}) + "\n")
    return path


def build_reward(args, workdir: Path) -> str:
    if args.shape == "cpu-small":
        from rsample.workers.backends.tiny_models import build_reward_model

        return str(build_reward_model(workdir / "reward", hidden_size=256, layers=4, max_position_embeddings=2048))
    import torch
    from shaped_models import build_shaped_reward_model

    return str(build_shaped_reward_model(workdir / "reward", args.shape, "cuda" if torch.cuda.is_available() else "cpu"))


def make_config(args, workdir: Path, reward: str) -> RunConfig:
    return RunConfig(
        run_id="", data=DataSelection(str(workdir / "prompts.jsonl")), policy="echo", reward_models=(reward,),
        sampling=SamplingConfig(n=args.n),
        models=ModelSettings(dtype=args.dtype, generation_backend="echo", reward_backend="transformers",
                             reward_micro_batch=args.max_sequences, reward_token_budget=args.token_budget,
                             reward_pass_cost=args.pass_cost),
        jobs=JobSettings(max_in_flight=max(4096, 4 * args.batch_size)), prompts_per_job=args.batch_size,
    )


def conversations(config: RunConfig) -> list[list[dict]]:
    """What the echo generator hands the reward worker, built here from the prompts alone."""
    from rsample.producer.dataset import iter_rows
    from rsample.producer.prompts import extract_prompt
    from rsample.workers.backends.zero_cost import EchoGenerator

    records = [extract_prompt(row, index) for index, row in iter_rows(config.data)]
    results = EchoGenerator().generate([record.messages for record in records], config.sampling, 0)
    return [[*record.messages, {"role": "assistant", "content": c.text}] for record, result in zip(records, results)
            for c in result.completions]


def direct(args, config: RunConfig) -> dict:
    """Side (a): transformers alone, everything tokenized and sorted before the clock starts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32}.get(args.dtype) or getattr(torch, args.dtype)
    reward = config.reward_models[0]
    tokenizer = AutoTokenizer.from_pretrained(reward)
    model = AutoModelForSequenceClassification.from_pretrained(reward, dtype=dtype).to(device).eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations(config)]
    encoded = sorted(tokenizer(texts, add_special_tokens=False)["input_ids"], key=len)
    ends = greedy_ends([len(ids) for ids in encoded], args.token_budget, args.max_sequences)
    batches = [encoded[start:end] for start, end in zip([0, *ends], ends)]
    padded = []
    for batch in batches:
        width = max(len(ids) for ids in batch)
        lengths = torch.tensor([len(ids) for ids in batch], device=device)
        padded.append((torch.tensor([ids + [0] * (width - len(ids)) for ids in batch], device=device), lengths))
    def forward(input_ids, lengths, masked: bool = False):  # no mask: the padding follows the real tokens, which a decoder never sees
        mask = (torch.arange(input_ids.shape[1], device=device)[None, :] < lengths[:, None]).long() if masked else None
        hidden = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return model.score(hidden[torch.arange(len(lengths), device=device), lengths - 1])

    def timed_passes() -> tuple[float, float | None]:
        clock = pass_clock(device)
        scores = []
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            for input_ids, lengths in padded:
                if clock:
                    clock.before_pass()
                scores.append(forward(input_ids, lengths))
                if clock:
                    clock.after_pass()
            torch.cat(scores).float().cpu()
        return time.perf_counter() - started, clock.collect()[0] if clock else None

    if args.busy_threads:  # both timed runs start warm: the one with threads is not the only one to find the device ready
        timed_passes()
    seconds, gpu_passes = timed_passes()
    contended = None
    if args.busy_threads:  # the same passes while threads render chat templates, as the worker's slots do meanwhile
        with rendering_meanwhile(tokenizer, conversations(config), args.busy_threads):
            contended = timed_passes()
    tokens, padded_tokens = sum(len(ids) for ids in encoded), sum(len(batch) * len(batch[-1]) for batch in batches)
    return {"seconds": seconds, "tokens": tokens, "batches": len(batches), "padding": 1 - tokens / padded_tokens,
            "gpu_pass_seconds": gpu_passes, "contended": contended,
            "pass_costs": pass_costs(forward, device, model.config.vocab_size) if args.pass_costs else []}


@contextlib.contextmanager
def rendering_processes(processes: int):
    """The workers started inside the block render in `processes` processes each (they inherit the environment)."""
    from rsample.workers.backends.render_processes import PROCESSES_ENV

    before = os.environ.get(PROCESSES_ENV)
    os.environ[PROCESSES_ENV] = str(processes)
    try:
        yield
    finally:
        if before is None:
            del os.environ[PROCESSES_ENV]
        else:
            os.environ[PROCESSES_ENV] = before


@contextlib.contextmanager
def rendering_meanwhile(tokenizer, every: list[list[dict]], threads: int, job: int = 256):
    """`threads` threads render and tokenize `job` conversations at a time, one thread at a time as the worker's slots
    do (`InProcessRenderer`), round and round, until the block ends: Python work that wants the GIL while the device
    thread launches its passes."""
    from rsample.workers.backends.render_processes import InProcessRenderer

    stop = threading.Event()
    renderer = InProcessRenderer(tokenizer, None)

    def render(offset: int) -> None:
        start = offset
        while not stop.is_set():
            renderer.render(every[start:start + job] or every[:job])
            start = (start + job) % len(every)

    workers = [threading.Thread(target=render, args=(index * job,), daemon=True) for index in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield
        if not all(worker.is_alive() for worker in workers):  # one that died took its load with it: the figure would lie
            raise RuntimeError("a rendering thread stopped before the passes ended (its error is printed above)")
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def pass_costs(forward, device: str, vocabulary: int) -> list[tuple[int, int, float, float]]:
    """(sequences, width, ms, ms with an attention mask) of one pass over random tokens, for a few shapes: the
    device's real cost of a pass against its padded tokens (what `--reward-pass-cost` models as fixed cost + tokens),
    and what the mask the reward worker no longer passes for a decoder cost (half the rows one token short, so that
    the mask holds padding: transformers then builds it into SDPA's mask and reads it back first)."""
    import torch

    shapes = [(rows, width) for width in (128, 512) for tokens in (1024, 4096, 16384, 32768) if (rows := tokens // width) >= 1]
    costs = []
    with torch.inference_mode():
        for rows, width in shapes:
            input_ids = torch.randint(0, vocabulary, (rows, width), device=device)
            lengths = width - torch.arange(rows, device=device) % 2
            timings: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(4):
                for masked in (False, True):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    began = time.perf_counter()
                    forward(input_ids, lengths, masked).float().cpu()
                    timings[masked].append((time.perf_counter() - began) * 1000)
            costs.append((rows, width, min(timings[False][1:]), min(timings[True][1:])))  # the first is a warm-up
    return costs


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.side == "direct":
        config = RunConfig.from_json((args.workdir / "config.json").read_text())
        (args.workdir / "direct.json").write_text(json.dumps(direct(args, config)))
        return
    with tempfile.TemporaryDirectory(prefix="rsample-reward-bench-") as tmp:
        workdir = Path(tmp)
        write_prompts(workdir / "prompts.jsonl", args.prompts, args.max_words)
        config = make_config(args, workdir, build_reward(args, workdir))
        (workdir / "config.json").write_text(config.to_json())
        count = len(conversations(config))
        directs, workers, rendered_apart = [], [], []
        for attempt in range(args.repeats):  # alternating, so that a disturbance of the machine hits both sides
            process = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", "direct", "--workdir", str(workdir)],
                                     capture_output=True, text=True, cwd=REPO)
            if process.returncode:
                sys.exit(f"side (a) failed:\n{process.stderr[-3000:]}")
            directs.append(json.loads((workdir / "direct.json").read_text()))
            worker_args = ("--slots", str(args.worker_slots)) if args.worker_slots else ()
            with GpuMemoryPeak() as peak, rendering_processes(0):  # the worker's slots render, whatever the environment says
                result = run_pipeline(config, workdir / f"pipeline-{attempt}", worker_args=worker_args)
            workers.append((result, peak.peak_mib))
            print(f"attempt {attempt}: (a) {directs[-1]['seconds']:.2f} s, (b) {result.seconds:.2f} s", flush=True)
            if args.render_processes:
                with rendering_processes(args.render_processes):
                    rendered_apart.append(run_pipeline(config, workdir / f"pipeline-{attempt}-apart", worker_args=worker_args))
                apart_logs = workdir / f"pipeline-{attempt}-apart" / "logs"
                if not logged(apart_logs, "chat templates rendered in"):
                    sys.exit(f"the reward worker did not render in processes of its own: see {apart_logs}")
                print(f"    (b) again, templates rendered in {args.render_processes} processes of their own: "
                      f"{rendered_apart[-1].seconds:.2f} s ({directs[-1]['tokens'] / rendered_apart[-1].seconds:.0f} tokens/s, "
                      f"{directs[-1]['seconds'] / rendered_apart[-1].seconds:.3f} of (a)); "
                      f"{rounds_line(apart_logs)}", flush=True)
            gpu, rounds = directs[-1]["gpu_pass_seconds"], rounds_line(workdir / f"pipeline-{attempt}" / "logs")
            print(f"    (a) {directs[-1]['batches']} passes, {directs[-1]['padding']:.1%} padding"
                  + (f", GPU ran passes {gpu:.2f} s" if gpu is not None else "") + f"; (b) {rounds}", flush=True)
            efficiency = gpu_time_per_padded_token(directs[-1], rounds)
            if efficiency:
                print(f"    GPU time per padded token: (a) {efficiency[0]:.3f} us, (b) {efficiency[1]:.3f} us, (b)/(a) {efficiency[1] / efficiency[0]:.3f}"
                      " (above 1: the worker's passes run slower than their padded tokens explain)", flush=True)
            if directs[-1]["contended"]:
                busy_seconds, busy_gpu = directs[-1]["contended"]
                print(f"    (a) again with {args.busy_threads} threads rendering one at a time meanwhile: {busy_seconds:.2f} s"
                      + (f", GPU ran passes {busy_gpu:.2f} s ({busy_gpu / gpu:.3f} times alone)" if busy_gpu and gpu else ""), flush=True)
            for rows, width, ms, masked_ms in directs[-1]["pass_costs"]:
                print(f"    one pass of {rows} x {width} tokens: {ms:.1f} ms ({rows * width / ms:.0f} tokens/ms); "
                      f"with an attention mask {masked_ms:.1f} ms")
    tokens = directs[0]["tokens"]
    a = min(run["seconds"] for run in directs)
    b, peak = min(workers, key=lambda run: run[0].seconds)
    device = _device()
    print(f"reward scoring on {device}: {args.shape} reward model, {args.prompts} prompts x n={args.n} "
          f"({count} conversations, {tokens} tokens), budget {args.token_budget} padded tokens, "
          f"at most {args.max_sequences} per batch, pass cost {args.pass_cost}, {args.batch_size} prompts per job, "
          f"{args.worker_slots or 'default'} worker slots")
    print(f"{'side':<44}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'(a) direct loop, pre-tokenized, globally sorted':<44}{a:>10.2f}{tokens / a:>12.0f}")
    print(f"{'(b) reward worker, job by job through Redis':<44}{b.seconds:>10.2f}{tokens / b.seconds:>12.0f}")
    print(f"ratio (b)/(a): {a / b.seconds:.3f}  (target >= 0.90); the worker's jobs spent {b.scoring_seconds:.2f} s inside the "
          "backend (summed over jobs, which overlap in its slots)" + (f"; peak GPU memory {peak} MiB" if peak else ""))
    figures = {"device": device, "shape": args.shape, "conversations": args.prompts * args.n, "tokens": tokens, "pass_cost": args.pass_cost,
               "direct_tokens_per_s": round(tokens / a, 1), "worker_tokens_per_s": round(tokens / b.seconds, 1),
               "ratio": round(a / b.seconds, 3)}
    if rendered_apart:
        apart = min(run.seconds for run in rendered_apart)
        print(f"{'(b) the same, rendering in ' + str(args.render_processes) + ' processes':<44}{apart:>10.2f}{tokens / apart:>12.0f}")
        figures["render_processes"] = {"processes": args.render_processes, "worker_tokens_per_s": round(tokens / apart, 1),
                                       "ratio": round(a / apart, 3)}
    if args.busy_threads:
        figures["busy_threads"] = {"threads": args.busy_threads, "seconds_alone": directs[0]["seconds"],
                                   "seconds_with_threads": directs[0]["contended"][0], "gpu_seconds_alone": directs[0]["gpu_pass_seconds"],
                                   "gpu_seconds_with_threads": directs[0]["contended"][1]}
    print(json.dumps(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def rounds_line(log_dir: Path) -> str:
    """The reward worker's own account of how it fed the device (its last `reward rounds:` log line)."""
    lines = logged(log_dir, "reward rounds: ")
    return lines[-1].split("reward rounds: ", 1)[1] if lines else "no rounds logged"


def logged(log_dir: Path, marker: str) -> list[str]:
    return [line for path in sorted(log_dir.glob("*.log")) for line in path.read_text(errors="replace").splitlines() if marker in line]


def gpu_time_per_padded_token(direct: dict, worker_rounds: str) -> tuple[float, float] | None:
    """Microseconds of GPU pass time per padded token, (a) and (b), where both sides timed their passes on a GPU:
    padding alone would make them equal."""
    match = re.search(r"(\d+) tokens, ([\d.]+)% padding.*GPU ran passes ([\d.]+) s", worker_rounds)
    if direct.get("gpu_pass_seconds") is None or match is None:
        return None
    tokens, padding, seconds = int(match[1]), float(match[2]) / 100, float(match[3])
    direct_padded = direct["tokens"] / (1 - direct["padding"])
    return direct["gpu_pass_seconds"] / direct_padded * 1e6, seconds / (tokens / (1 - padding)) * 1e6


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


if __name__ == "__main__":
    main()
