"""Resume at scale: how long, and how much memory, the coordinator takes to resume a run whose output already
holds N pairs (default 1,000,000), against the way resuming worked before (parsing every written row).

    python bench/resume_at_scale.py                      # 1,000,000 pairs, 4 scored candidates each
    python bench/resume_at_scale.py --rows 100000 --baseline none

The files are written by the real ledger (`Ledger.commit`, 4,096 rows a commit) from a real dataset of N
prompts registered in an embedded Redis, as if a run had written them all and then died with half a commit
on disk. Each side then runs in a fresh process, so its peak memory (ru_maxrss) is its own:
- resume: what `rsample aggregate` does before its first step: the ledger's index from the outcomes file
  (cutting the half-written commit off), and the feeder replaying the dataset up to its cursor;
- resume+live: the same while the live report counts the rows the files hold, in a thread of the same process (as the
  coordinator does, so that `rsample status` covers the whole run): what that thread costs the feeder's replay;
- baseline: the ledger of before, which parsed every pair and score row to find crash leftovers (the same
  files, its repair path: `_keep_committed`).
Target: resume under a minute and under 1 GiB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rsample.producer.driver.ledger import Ledger, _keep_committed
from rsample.producer.feeder import Feeder
from rsample.producer.prompts import extract_prompt
from rsample.producer.registration import register_run
from rsample.producer.report.live import LiveNumbers
from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig
from rsample.workers.common.messages import PAIR, Outcome
from rsample.workers.runtime.connection import connect
from rsample.workers.runtime.embedded_redis import EmbeddedRedis
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.run_state import load_run

COMMIT_ROWS = 4096
ANSWER = "The river runs past the city, and the music of the water carries the story on. " * 2


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_run(workdir: Path, rows: int, candidates: int, url: str) -> RunConfig:
    dataset = workdir / "prompts.jsonl"
    with dataset.open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"prompt": f"question number {i}: tell a story about the river and the city"}) + "\n")
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    client = connect(url)
    config, _ = register_run(client, config)
    ledger = Ledger(workdir / "pairs.jsonl", workdir / "scores.jsonl", config.run_id)
    outcomes, pairs, scores = [], [], []
    with dataset.open() as handle:
        for index, line in enumerate(handle):
            record = extract_prompt(json.loads(line), index)
            answer = [*record.messages, {"role": "assistant", "content": ANSWER}]
            outcomes.append(Outcome(index, record.prompt_id, PAIR))
            pairs.append({"prompt_id": record.prompt_id, "messages": record.messages, "chosen": answer, "rejected": answer,
                          "chosen_score": {"r": 1.5}, "rejected_score": {"r": -0.5}, "num_candidates": candidates})
            scores += [{"prompt_id": record.prompt_id, "completion_index": k, "completion": ANSWER, "scores": {"r": 0.1 * k},
                        "is_reference": False, "finish_reason": "stop", "num_tokens": 40} for k in range(candidates)]
            if len(outcomes) == COMMIT_ROWS:
                ledger.commit(outcomes, pairs, scores)
                outcomes, pairs, scores = [], [], []
    ledger.commit(outcomes, pairs, scores)
    ledger.close()
    with (workdir / "pairs.jsonl").open("a") as handle:  # the run dies in its next commit: data written, outcomes not
        handle.write(json.dumps({"prompt_id": "uncommitted"}) + "\n" + '{"prompt_id": "cut')
    client.hset(RunKeys(config.run_id).stats, mapping={"feed_cursor": rows, "feed_done": 1})
    client.close()
    return config


def measure(side: str, workdir: Path, url: str) -> dict:
    client = connect(url)
    run_id = json.loads((workdir / "pairs.outcomes.jsonl").open().readline())["rsample_run"]
    config = load_run(client, run_id)
    started = time.perf_counter()
    if side in ("resume", "resume+live"):
        ledger = Ledger(workdir / "pairs.jsonl", workdir / "scores.jsonl", run_id)
        indexed = time.perf_counter()
        live = LiveNumbers()
        if side == "resume+live":  # as the coordinator does: the live report counts the files in a thread meanwhile
            live.start_from(workdir / "pairs.jsonl", workdir / "scores.jsonl")
        Feeder(client, config, ledger)
        fed = time.perf_counter()
        live.summary()  # waits for the count
        return {"rows": len(ledger.rows), "ledger_s": indexed - started, "feeder_s": fed - indexed, "counted_s": time.perf_counter() - indexed,
                "seconds": fed - started, "peak_mib": peak_mib()}
    ledger_ids = set()
    with (workdir / "pairs.outcomes.jsonl").open() as handle:
        next(handle)
        ledger_ids = {json.loads(line)["prompt_id"] for line in handle if line.endswith("\n")}
    _keep_committed(workdir / "pairs.jsonl", ledger_ids, key=lambda row: row["prompt_id"])
    _keep_committed(workdir / "scores.jsonl", ledger_ids, key=lambda row: (row["prompt_id"], row["completion_index"]))
    return {"rows": len(ledger_ids), "seconds": time.perf_counter() - started, "peak_mib": peak_mib()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=4, help="scored candidates per pair")
    parser.add_argument("--baseline", choices=("legacy", "none"), default="legacy")
    parser.add_argument("--measure", choices=("resume", "resume+live", "legacy"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.workdir, args.redis_url)))
        return

    with tempfile.TemporaryDirectory(prefix="rsample-resume-") as tmp, EmbeddedRedis() as server:
        workdir = Path(tmp)
        started = time.perf_counter()
        write_run(workdir, args.rows, args.candidates, server.url)
        sizes = {name: (workdir / name).stat().st_size / 2**20 for name in ("pairs.jsonl", "scores.jsonl", "pairs.outcomes.jsonl")}
        print(f"wrote {args.rows:,} pairs in {time.perf_counter() - started:.0f} s: "
              + ", ".join(f"{name} {size:,.0f} MiB" for name, size in sizes.items()), flush=True)
        results = {}
        for side in ("resume", "resume+live", *(["legacy"] if args.baseline == "legacy" else [])):
            command = [sys.executable, __file__, "--measure", side, "--workdir", str(workdir), "--redis-url", server.url]
            results[side] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            if side.startswith("resume"):  # the half-written commit is cut off: put it back for the next side to find
                with (workdir / "pairs.jsonl").open("a") as handle:
                    handle.write(json.dumps({"prompt_id": "uncommitted"}) + "\n")

    print(f"\n| resume of {args.rows:,} written pairs | rows indexed | seconds | peak memory |")
    print("| --- | --- | --- | --- |")
    resume = results["resume"]
    print(f"| index from the outcomes file + feeder replay (now) | {resume['rows']:,} | {resume['seconds']:.1f} "
          f"(ledger {resume['ledger_s']:.1f}, feeder {resume['feeder_s']:.1f}) | {resume['peak_mib']:,.0f} MiB |")
    live = results["resume+live"]
    print(f"| the same, the live report counting the files in a thread meanwhile | {live['rows']:,} | {live['seconds']:.1f} "
          f"(ledger {live['ledger_s']:.1f}, feeder {live['feeder_s']:.1f}; counted after {live['counted_s']:.1f}) | {live['peak_mib']:,.0f} MiB |")
    if "legacy" in results:
        legacy = results["legacy"]
        print(f"| baseline: parse every written row (before) | {legacy['rows']:,} | {legacy['seconds']:.1f} | {legacy['peak_mib']:,.0f} MiB |")


if __name__ == "__main__":
    main()
