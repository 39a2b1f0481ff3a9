"""Queue and aggregation capacity: how many completions per second Redis + RQ + the coordinator move
when generating and scoring cost nothing, and Redis's peak memory as the dataset grows.

    python bench/queue_capacity.py                              # 1,000 and 10,000 prompts, n=16
    python bench/queue_capacity.py --prompts 1000 10000 100000 --n 16 --batch-size 64

Uses the documented zero-cost backends (`--backend echo`: completion k is the prompt plus " #k";
`--reward-backend length`): never for real data. Each size runs on a fresh Redis with one generation
worker and one reward worker; the time runs from the first prompt fed to the last pair written (fsynced).
The smallest size is the baseline: at the same window (`--max-in-flight`), Redis memory must not grow with
the dataset; the peak is what the in-flight payloads take at the worst moment, "after the run" is what a
run leaves behind. Target: >= 20,000 completions/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import run_pipeline, write_prompts

from rsample.workers.common import defaults
from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig, SamplingConfig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=defaults.PROMPTS_PER_JOB, help="prompts per generation job")
    parser.add_argument("--max-in-flight", type=int, default=defaults.MAX_IN_FLIGHT)
    parser.add_argument("--generate-workers", type=int, default=1)
    args = parser.parse_args(argv)

    rows = []
    for count in args.prompts:
        with tempfile.TemporaryDirectory(prefix="rsample-capacity-") as tmp:
            workdir = Path(tmp)
            config = RunConfig(
                run_id="", data=DataSelection(str(write_prompts(workdir / "prompts.jsonl", count))),
                policy="echo", reward_models=("length",), sampling=SamplingConfig(n=args.n),
                models=ModelSettings(generation_backend="echo", reward_backend="length"),
                jobs=JobSettings(max_in_flight=args.max_in_flight), prompts_per_job=args.batch_size,
            )
            result = run_pipeline(config, workdir, generate_workers=args.generate_workers)
        assert result.pairs == count, f"{result.pairs} pairs for {count} prompts"
        rows.append({"prompts": count, "completions": result.completions, "seconds": round(result.seconds, 2),
                     "completions_per_s": round(result.completions_per_second), "redis_peak_mib": round(result.redis_peak_bytes / 2**20, 2),
                     "redis_after_mib": round(result.redis_end_bytes / 2**20, 2)})
    print(f"n={args.n}, batch {args.batch_size} prompts/job, max in flight {args.max_in_flight}, "
          f"{args.generate_workers} generation worker(s) + 1 reward worker + coordinator")
    print(f"{'prompts':>9}{'completions':>13}{'seconds':>9}{'completions/s':>15}{'Redis peak MiB':>16}{'after the run':>15}")
    for row in rows:
        print(f"{row['prompts']:>9}{row['completions']:>13}{row['seconds']:>9}{row['completions_per_s']:>15}"
              f"{row['redis_peak_mib']:>16}{row['redis_after_mib']:>15}")
    base, largest = rows[0], rows[-1]
    print(f"Redis peak at {largest['prompts']} vs {base['prompts']} prompts: x{largest['redis_peak_mib'] / base['redis_peak_mib']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
