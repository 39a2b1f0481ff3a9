"""GPU check: the transformers backend on CUDA in bf16 with Llama-3.2-1B-shaped random models, pipeline vs straight line.

    bash bench/gpu_check.sh                      # on the GPU machine: installs the carried wheels, runs this
    python bench/gpu_check.py --dry-run          # anywhere (CPU): tiny models, a few prompts, the same code path

(a) straight line: one process generates and scores batch after batch (no Redis), with the batches and seeds
the pipeline's jobs use. (b) pipeline: Redis, a generation worker and a reward worker sharing the GPU, and the
coordinator writing pairs. Both sides in fresh processes, models loaded before the clock starts, alternately.
Then the reward model scores the same conversations in bf16 and in fp32 (does bf16 pick the same best?).
Targets: (b)/(a) >= 0.95 in generated tokens/s; bf16 picks what fp32 picks within bf16's resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, GpuMemoryPeak, agreement, run_pipeline, straight_line, write_prompts

from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig, SamplingConfig

FULL = dict(shape="llama-3.2-1b", prompts=512, n=8, max_new_tokens=256, batch_size=64, precision_prompts=64)
DRY = dict(shape="tiny", prompts=12, n=4, max_new_tokens=16, batch_size=4, precision_prompts=6)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models and a few prompts; runs on CPU")
    parser.add_argument("--shape", choices=["llama-3.2-1b", "tiny"])
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--batch-size", type=int, help="prompts per generation job")
    parser.add_argument("--precision-prompts", type=int, help="prompts whose candidates are scored in bf16 and fp32")
    parser.add_argument("--repeats", type=int, default=1, help="alternate (a) and (b) this many times; the best of each counts")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--side", choices=["build", "direct", "precision"], help=argparse.SUPPRESS)  # internal: fresh processes
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (DRY if args.dry_run else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU"


def make_config(args, workdir: Path) -> RunConfig:
    return RunConfig(
        run_id="", data=DataSelection(str(workdir / "prompts.jsonl")), policy=str(workdir / "policy"),
        reward_models=(str(workdir / "reward"),),
        sampling=SamplingConfig(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens),
        models=ModelSettings(dtype="bfloat16", generation_backend="transformers", reward_backend="transformers"),
        jobs=JobSettings(max_in_flight=max(4096, 4 * args.batch_size)), prompts_per_job=args.batch_size, keep_truncated=True,
    )


def side_build(args) -> dict:
    import torch
    from shaped_models import build_shaped_policy, build_shaped_reward_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    build_shaped_policy(args.workdir / "policy", args.shape, device)
    build_shaped_reward_model(args.workdir / "reward", args.shape, device)
    return {"seconds": time.perf_counter() - started, "device": device_name()}


def side_direct(args) -> dict:
    import torch

    config = RunConfig.from_json((args.workdir / "config.json").read_text())
    result = straight_line(config, keep_prompts=args.precision_prompts)
    (args.workdir / "conversations.json").write_text(json.dumps(result.pop("conversations")))
    result["torch_peak_mib"] = torch.cuda.max_memory_allocated() // 2**20 if torch.cuda.is_available() else None
    return result


def side_precision(args) -> dict:
    """The same conversations scored in bf16 and fp32: how far apart, and whether they pick the same best and worst."""
    import torch

    from rsample.workers.backends.transformers_reward import TransformersRewardModel

    groups = json.loads((args.workdir / "conversations.json").read_text())
    flat = [conversation for group in groups for conversation in group]
    scores = {}
    for dtype in ("bfloat16", "float32"):
        model = TransformersRewardModel(str(args.workdir / "reward"), dtype)
        scores[dtype] = model.score(flat)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"conversations": len(flat), **agreement(scores["bfloat16"], scores["float32"], [len(group) for group in groups])}


def run_side(side: str, workdir: Path) -> dict:
    """One side in a fresh process (its result in a file: engines print to stdout too)."""
    result_path = workdir / f"{side}.result.json"
    process = subprocess.run([sys.executable, __file__, "--side", side, "--workdir", str(workdir), *sys.argv[1:]],
                             capture_output=True, text=True, cwd=REPO)
    if process.returncode:
        sys.exit(f"side {side} failed:\n{process.stderr[-4000:]}")
    return json.loads(result_path.read_text())


def report(args, device: str, directs: list[dict], pipelines: list, precision: dict) -> dict:
    a = max(directs, key=lambda run: run["tokens"] / run["seconds"])
    b = max(pipelines, key=lambda run: run["result"].tokens_per_second)
    a_rate, a_generation = a["tokens"] / a["seconds"], a["tokens"] / a["generation_seconds"]
    b_rate = b["result"].tokens_per_second
    scored_rate = a["scored_tokens"] / a["scoring_seconds"]
    # one reward GPU keeps up with this many generation GPUs: the same completions take this much longer to generate
    generation_per_reward = a["generation_seconds"] / a["scoring_seconds"]
    figures = {
        "device": device, "shape": args.shape, "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "direct_tokens": a["tokens"], "pipeline_tokens": b["result"].tokens,
        "pipeline_pairs": b["result"].pairs, "direct_tokens_per_s": round(a_rate, 1), "direct_generation_tokens_per_s": round(a_generation, 1),
        "direct_scoring_tokens_per_s": round(scored_rate, 1), "pipeline_tokens_per_s": round(b_rate, 1),
        "ratio": round(b_rate / a_rate, 3), "ratio_to_generation_alone": round(b_rate / a_generation, 3),
        "direct_peak_gpu_mib": a["gpu_peak_mib"], "pipeline_peak_gpu_mib": b["gpu_peak_mib"],
        "generation_gpus_per_reward_gpu": round(generation_per_reward, 2), "precision": precision,
    }
    print(f"\nGPU check on {device}: {args.shape}-shaped random models in bf16, transformers backend, "
          f"{args.prompts} prompts x n={args.n}, {args.max_new_tokens} new tokens, {args.batch_size} prompts per job")
    print("| side | generated tokens | seconds | generated tokens/s | peak GPU memory (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| (a) straight line: generate, then score | {a['tokens']} | {a['seconds']:.1f} | {a_rate:.0f} | {a['gpu_peak_mib'] or 'n/a'} |")
    print(f"| (a) of which generating | {a['tokens']} | {a['generation_seconds']:.1f} | {a_generation:.0f} | |")
    print(f"| (a) of which scoring ({a['scored_tokens']} tokens read) | | {a['scoring_seconds']:.1f} | "
          f"{scored_rate:.0f} read/s | |")
    print(f"| (b) pipeline: two workers sharing the GPU | {b['result'].tokens} | {b['result'].seconds:.1f} | {b_rate:.0f} | "
          f"{b['gpu_peak_mib'] or 'n/a'} |")
    print(f"ratio (b)/(a): {b_rate / a_rate:.3f} (target >= 0.95); (b) against generation alone: {b_rate / a_generation:.3f}")
    print(f"one reward GPU scores what {generation_per_reward:.1f} generation GPUs generate (n={args.n}, {args.max_new_tokens} tokens)")
    print(f"rewards bf16 vs fp32 on {precision['conversations']} conversations of {precision['prompts']} prompts: "
          f"pearson {precision['pearson']:.4f}, max |diff| {precision['max_abs_diff']:.4f} (fp32 std {precision['reference_std']:.4f}), "
          f"same best {precision['same_best']}/{precision['prompts']}, same worst {precision['same_worst']}/{precision['prompts']}, "
          f"pair order agrees {precision['pair_order_agreement']:.3f}")
    print(json.dumps(figures))
    return figures


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.side:
        handler = {"build": side_build, "direct": side_direct, "precision": side_precision}[args.side]
        (args.workdir / f"{args.side}.result.json").write_text(json.dumps(handler(args)))
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run for the CPU rehearsal")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="rsample-gpu-check-") as tmp:
        workdir = Path(tmp)
        built = run_side("build", workdir)
        print(f"built {args.shape}-shaped policy and reward model in {built['seconds']:.1f} s on {built['device']}", flush=True)
        write_prompts(workdir / "prompts.jsonl", args.prompts)
        config = make_config(args, workdir)
        (workdir / "config.json").write_text(config.to_json())
        directs, pipelines = [], []
        for attempt in range(args.repeats):  # alternating, so that a disturbance of the machine hits both sides
            with GpuMemoryPeak() as peak:
                direct = run_side("direct", workdir)
            direct["gpu_peak_mib"] = peak.peak_mib
            direct["scored_tokens"] = scored_tokens(config, workdir)
            directs.append(direct)
            print(f"(a) straight line: {direct['tokens']} tokens in {direct['seconds']:.1f} s "
                  f"(generating {direct['generation_seconds']:.1f} s, scoring {direct['scoring_seconds']:.1f} s)", flush=True)
            with GpuMemoryPeak() as peak:
                result = run_pipeline(config, workdir / f"pipeline-{attempt}")
            pipelines.append({"result": result, "gpu_peak_mib": peak.peak_mib})
            print(f"(b) pipeline: {result.tokens} tokens in {result.seconds:.1f} s, {result.pairs} pairs", flush=True)
        precision = run_side("precision", workdir)
        figures = report(args, built["device"], directs, pipelines, precision)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def scored_tokens(config: RunConfig, workdir: Path) -> int:
    """Tokens the reward model reads for the straight line's conversations, estimated from the kept ones."""
    from rsample.workers.backends.models import load_tokenizer
    from rsample.workers.backends.templates import render_conversations

    tokenizer = load_tokenizer(config.reward_models[0], "reward")
    groups = json.loads((workdir / "conversations.json").read_text())
    sample = [len(ids) for ids in render_conversations(tokenizer, [conversation for group in groups for conversation in group])]
    total = config.sampling.n * sum(1 for _ in (workdir / "prompts.jsonl").open())
    return round(sum(sample) / len(sample) * total)


if __name__ == "__main__":
    main()
