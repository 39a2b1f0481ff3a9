"""The run report over a large run: seconds and peak memory of `rsample report` against the floor of parsing every
row of the same files (orjson, nothing else), measured in the same run.

    python bench/report_at_scale.py                  # 1,000,000 pairs, 16,000,000 scored candidates (about 5 GB)
    python bench/report_at_scale.py --pairs 20000    # a quick look

The files are synthetic, in the documented format: n=16 candidates of 5 to 60 words per prompt, two reward models
with independent scores, a fifth of the candidates cut at the token limit. Each side runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the river city music story poem science code test answer question".split()


def write_run(directory: Path, pairs: int, n: int) -> None:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for _ in range(997)]
    prompt = [{"role": "user", "content": "write about the river"}]
    with (directory / "pairs.jsonl").open("w") as pair_file, (directory / "scores.jsonl").open("w") as score_file, \
            (directory / "pairs.outcomes.jsonl").open("w") as outcome_file:
        outcome_file.write(json.dumps({"rsample_run": "bench"}) + "\n")
        for p in range(pairs):
            prompt_id = f"{p:020x}"
            values = [(rng.gauss(0, 1), rng.gauss(0, 1)) for _ in range(n)]
            candidates = [texts[(p * 7 + i * 13) % len(texts)] for i in range(n)]
            score_file.write("".join(json.dumps({
                "prompt_id": prompt_id, "completion_index": i, "num_samples": 1, "completion": text, "scores": {"rm-a": a, "rm-b": b},
                "is_reference": False, "finish_reason": "length" if i % 5 == 0 else "stop", "num_tokens": len(text.split()),
            }) + "\n" for i, (text, (a, b)) in enumerate(zip(candidates, values))))
            best = max(range(n), key=lambda i: values[i][0])
            worst = min(range(n), key=lambda i: values[i][0])
            pair_file.write(json.dumps({
                "prompt_id": prompt_id, "messages": prompt, "chosen": [*prompt, {"role": "assistant", "content": candidates[best]}],
                "rejected": [*prompt, {"role": "assistant", "content": candidates[worst]}],
                "chosen_score": dict(zip(("rm-a", "rm-b"), values[best])), "rejected_score": dict(zip(("rm-a", "rm-b"), values[worst])),
                "num_candidates": n, "num_unique": n,
            }) + "\n")
            outcome_file.write(json.dumps({"row_index": p, "prompt_id": prompt_id, "outcome": "pair", "reason": None}) + "\n")


def side(name: str, directory: Path) -> dict:
    """In this (fresh) process: 'parse' reads every row and nothing else; 'report' writes the whole report."""
    started = time.perf_counter()
    if name == "parse":
        from rsample.producer.report.stats import read_rows

        rows = sum(1 for path in ("pairs.jsonl", "scores.jsonl", "pairs.outcomes.jsonl") for _ in read_rows(directory / path))
        detail = f"{rows:,} rows"
    else:
        from rsample.producer.report.document import write_report

        report = write_report(directory / "pairs.jsonl", directory / "scores.jsonl", directory / "report")
        detail = f"{len(report.figures)} figures, warnings: {report.warnings or 'none'}"
    return {"seconds": time.perf_counter() - started, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "detail": detail}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--side", choices=["parse", "report"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(side(args.side, args.dir)))
        return
    with tempfile.TemporaryDirectory(prefix="rsample-report-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        write_run(directory, args.pairs, args.n)
        size = sum(p.stat().st_size for p in directory.iterdir()) / 2**30
        print(f"wrote {args.pairs:,} pairs and {args.pairs * args.n:,} scored candidates ({size:.1f} GiB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        results = {}
        for name in ("parse", "report"):
            process = subprocess.run([sys.executable, __file__, "--side", name, "--dir", str(directory)], capture_output=True, text=True)
            if process.returncode:
                sys.exit(f"side {name} failed:\n{process.stderr[-3000:]}")
            results[name] = json.loads(process.stdout.splitlines()[-1])
    print(f"{'side':<46}{'seconds':>9}{'peak MiB':>10}")
    print(f"{'(a) parse every row (orjson), nothing else':<46}{results['parse']['seconds']:>9.1f}{results['parse']['peak_mib']:>10}")
    print(f"{'(b) rsample report: numbers, figures, report.md':<46}{results['report']['seconds']:>9.1f}{results['report']['peak_mib']:>10}")
    print(f"(b)/(a): {results['report']['seconds'] / results['parse']['seconds']:.2f}; {results['report']['detail']}")


if __name__ == "__main__":
    main()
