"""Helpers for fault-injection tests: processes to start and kill, and the exactly-once check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, read_jsonl
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from rsample.producer.prompts import extract_prompt
from rsample.workers.common.messages import PromptRecord
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.safe_job import SafeJob

STARTED: list[subprocess.Popen] = []
"""Every process a test started, killed after the test whatever happened (see `conftest.reap_processes`)."""


def start(*args: str, log: Path) -> subprocess.Popen:
    """A CLI process whose output goes to `log` (pipes could fill up and block it)."""
    handle = log.open("a")
    process = subprocess.Popen([sys.executable, "-m", "rsample.producer", *args], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    STARTED.append(process)
    return process


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_entries(client, queue_name: str) -> list[str]:
    """The started registry's `job_id:execution_id` entries: one per attempt of a job."""
    registry = StartedJobRegistry(queue=make_queue(client, queue_name), job_class=SafeJob)
    return [entry.decode() for entry in client.zrange(registry.key, 0, -1)]


def started_jobs(client, queue_name: str) -> list[str]:
    return [entry.split(":")[0] for entry in running_entries(client, queue_name)]


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def job_status(client, job_id: str):
    try:
        return SafeJob.fetch(job_id, connection=client, serializer=JSONSerializer).get_status()
    except (NoSuchJobError, InvalidJobOperation):  # finished jobs are deleted at once
        return JobStatus.FINISHED


def kill_mid_job(process: subprocess.Popen, client, queue_name: str, restart, attempts: int = 8):
    """SIGKILLs `process` while it runs a job of `queue_name`; returns (job id, replacement process).

    A job can finish between seeing it run and the kill landing: then it tries again with a fresh worker.
    """
    passed_over: set[str] = set()
    for _ in range(attempts):
        def running_job():
            for job_id in started_jobs(client, queue_name):
                if job_id not in passed_over and job_status(client, job_id) == JobStatus.STARTED:
                    return job_id
            return None

        job_id = wait_for(running_job, 180, f"a running job on {queue_name}")
        kill(process)
        passed_over.add(job_id)
        status = job_status(client, job_id)
        process = restart()
        if status == JobStatus.STARTED:
            return job_id, process
    raise AssertionError(f"never caught a job of {queue_name} mid-flight")


SCORED_OUTCOMES = ("pair", "dropped_margin", "dropped_tie", "dropped_unfinished", "dropped_disagreement", "dropped_unverified")
"""Outcomes of prompts whose candidates were all scored: each has its rows in the scores file."""
TOO_LONG_FOR_REWARDS = "fewer than two candidates scored by every reward model (too long for its context, or given no score)"


def prompts_that_got_candidates(counts: dict[str, int]) -> int:
    """Prompts that were generated and judged: a pair, or dropped for a reason of the data (identical, tie, ...)."""
    return sum(counts.get(kind, 0) for kind in (*SCORED_OUTCOMES, "dropped_identical"))


def outcome_rows(out: Path) -> list[dict]:
    return read_jsonl(out.with_name(f"{out.stem}.outcomes.jsonl"))[1:]


def assert_exactly_once(out: Path, scores: Path | None, dataset_rows: list) -> dict[str, int]:
    """Every row of the dataset has exactly one outcome, every pair and score row is written exactly once."""
    outcomes = outcome_rows(out)
    assert sorted(o["row_index"] for o in outcomes) == list(range(len(dataset_rows))), "a row is missing or settled twice"
    expected_ids = {}
    for index, row in enumerate(dataset_rows):
        record = None if isinstance(row, str) else extract_prompt(row, index)  # a str is a line that is not JSON
        if isinstance(record, PromptRecord):
            expected_ids.setdefault(record.prompt_id, index)
    settled_ids = [o["prompt_id"] for o in outcomes if o["outcome"] != "duplicate" and o["prompt_id"]]
    assert sorted(settled_ids) == sorted(expected_ids), "a prompt is missing or settled twice"
    pairs = read_jsonl(out)
    assert len(pairs) == len({p["prompt_id"] for p in pairs}), "a pair is written twice"
    assert {p["prompt_id"] for p in pairs} == {o["prompt_id"] for o in outcomes if o["outcome"] == "pair"}
    if scores is not None:
        keys = [(s["prompt_id"], s["completion_index"]) for s in read_jsonl(scores)]
        assert len(keys) == len(set(keys)), "a score row is written twice"
        scored = {o["prompt_id"] for o in outcomes if o["outcome"] in SCORED_OUTCOMES or o.get("reason") == TOO_LONG_FOR_REWARDS}
        assert {k[0] for k in keys} == scored
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o["outcome"]] = counts.get(o["outcome"], 0) + 1
    return counts


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids
