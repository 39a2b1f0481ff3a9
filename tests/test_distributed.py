"""The distributed shape: enqueue, two generation workers, a reward worker and the aggregator as separate processes."""

import json
import re
import signal
import subprocess
import sys

from conftest import REPO, read_jsonl, rsample

from rsample.workers.runtime.keys import RunKeys


def start_worker(*args):
    return subprocess.Popen([sys.executable, "-m", "rsample.producer", "worker", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_enqueue_workers_aggregate_and_status(redis_server, redis_client, tiny_models, chat_dataset, tmp_path):
    url = redis_server.url
    enqueued = rsample("enqueue", "--redis-url", url, "--dataset", str(chat_dataset), "--policy", tiny_models["policy"],
                       "--reward-model", tiny_models["reward"], "--n", "3", "--max-new-tokens", "8", "--batch-size", "2")
    run_id = enqueued.stdout.strip().splitlines()[-1]
    keys = RunKeys(run_id)
    redis_client.config_set("maxmemory", 64 * 2**20)
    waiting = rsample("status", "--redis-url", url, "--run", run_id).stdout  # enqueued: nobody feeds it yet
    redis_client.config_set("maxmemory", 0)
    used = re.search(r"^redis memory: ([\d.]+) MiB used of maxmemory 64 MiB \((\d+)%, noeviction\)$", waiting, re.MULTILINE)
    assert used and abs(float(used[1]) - redis_client.info("memory")["used_memory"] / 2**20) < 1, waiting  # what a full Redis would stall
    assert f"run {run_id} (no coordinator: `rsample aggregate --run {run_id} --out ...`, or the `rsample run` that made it, feeds and writes it)" in waiting

    workers = [start_worker("generate", "--redis-url", url), start_worker("generate", "--redis-url", url, "--run", run_id),
               start_worker("reward", "--redis-url", url)]
    try:
        out, scores = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
        result = rsample("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--scores-out", str(scores), "--no-progress")
        status = json.loads(rsample("status", "--redis-url", url, "--run", run_id, "--json").stdout)[0]
        pairs = status["outcomes"].get("pair", 0)
        assert f"pairs written        {pairs}" in result.stdout and "duplicate rows       1" in result.stdout
        rows = read_jsonl(out)
        assert len(rows) == len({r["prompt_id"] for r in rows}) == pairs
        assert status["complete"] and status["rows"] == status["generated"] == status["written"] == 8
        assert status["in_flight"] == 0
        assert status["completions"] == 21
        assert status["outcomes"].pop("duplicate") == 1
        assert sum(status["outcomes"].values()) == 7 and set(status["outcomes"]) <= {"pair", "dropped_tie", "dropped_unfinished", "dropped_identical"}
        assert {q["name"]: q["workers"] for q in status["queues"]} == {keys.generate_queue: 2, keys.score_queue(0): 1}
        assert all(q["queued"] == 0 and q["failed"] == 0 for q in status["queues"])
        # payloads are deleted once written: Redis keeps counters, not data
        assert redis_client.keys(f"rsample:run:{run_id}:batch:*") == []
        assert redis_client.keys(f"rsample:run:{run_id}:scores:*") == []
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        logs = [process.communicate(timeout=30)[0] for process in workers]
    assert [p.returncode for p in workers] == [0, 0, 0], logs
    assert f"serving run {run_id}" in logs[0]  # attached to the latest run without --run


def test_worker_for_a_run_that_does_not_exist_says_so(redis_server):
    result = subprocess.run([sys.executable, "-m", "rsample.producer", "worker", "generate", "--redis-url", redis_server.url, "--run", "nope"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("error: no run 'nope' in this Redis (see `rsample status` for the runs it holds)")


def test_a_worker_without_run_serves_the_newest_run_not_yet_finished(redis_client):
    """A one-shot enqueue of a run that already finished must not draw the workers away from an older unfinished one."""
    from rsample.workers.common.config import DataSelection, RunConfig
    from rsample.workers.runtime.keys import RunKeys
    from rsample.workers.runtime.run_state import latest_run_id, save_run

    for run_id, created in (("older", 1.0), ("newer", 2.0)):
        save_run(redis_client, RunConfig(run_id=run_id, data=DataSelection("d"), policy="p", reward_models=("r",), created_at=created))
    assert latest_run_id(redis_client) == "newer"
    redis_client.hset(RunKeys("newer").stats, "finished_at", 3.0)
    assert latest_run_id(redis_client) == "older"
    redis_client.hset(RunKeys("older").stats, "finished_at", 4.0)
    assert latest_run_id(redis_client) == "newer"  # all finished: the newest, for `rsample status` and a resume
