"""The benchmarks that need a GPU or take minutes, rehearsed small on this machine: they run, and their
figures add up."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, script, *args], cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def test_the_gpu_check_rehearses_on_a_cpu(tmp_path):
    out = tmp_path / "figures.json"
    printed = run_bench("gpu_check.py", "--dry-run", "--out", str(out)).stdout
    figures = json.loads(out.read_text())
    assert figures["device"] == "CPU" and figures["prompts"] == 12 and figures["n"] == 4
    # the same prompts, seeds and batches on both sides: the same tokens, all the way to the written pairs
    assert figures["direct_tokens"] == figures["pipeline_tokens"] > 0
    assert figures["pipeline_pairs"] == figures["prompts"]
    precision = figures["precision"]
    assert precision["conversations"] == 6 * 4 and precision["pearson"] > 0.99 and precision["same_best"] >= 5
    assert "| (b) pipeline" in printed and "ratio (b)/(a)" in printed


def test_reward_throughput_runs_and_counts_its_conversations(tmp_path):
    out = tmp_path / "figures.json"
    printed = run_bench("reward_throughput.py", "--prompts", "8", "--n", "2", "--max-words", "40", "--batch-size", "4", "--repeats", "1",
                        "--busy-threads", "2", "--render-processes", "1", "--out", str(out)).stdout
    figures = json.loads(out.read_text())
    assert figures["conversations"] == 16 and figures["tokens"] > 16 * 8
    # the worker's log at exit accounts for every token the direct side read, fed in rounds
    assert re.search(rf"\(b\) \d+ rounds of [\d.]+ jobs, \d+ passes, {figures['tokens']} tokens", printed), printed
    assert figures["direct_tokens_per_s"] > 0 and figures["worker_tokens_per_s"] > 0
    assert re.search(r"\(a\) again with 2 threads rendering one at a time meanwhile: [\d.]+ s", printed), printed
    assert figures["busy_threads"]["threads"] == 2 and figures["busy_threads"]["seconds_with_threads"] > 0
    # again with the worker's templates rendered in a process of their own: the same tokens scored
    assert re.search(rf"rendered in 1 processes of their own: [\d.]+ s .*; \d+ rounds of [\d.]+ jobs, \d+ passes, {figures['tokens']} tokens",
                     printed), printed
    assert figures["render_processes"]["processes"] == 1 and figures["render_processes"]["worker_tokens_per_s"] > 0


def test_batching_cost_counts_least_cost_rounds_cheaper_than_greedy_ones():
    printed = run_bench("batching_cost.py", "--prompts", "64", "--n", "4").stdout
    costs = {line[:44].strip(): float(line.split()[-1]) for line in printed.splitlines()[2:]}
    assert costs["one global sort, greedy (the direct loop)"] == 1.0
    for jobs in ("1 job", "2 jobs", "4 jobs"):
        assert costs[f"rounds of {jobs}, least cost"] <= costs[f"rounds of {jobs}, greedy"]
    assert costs["rounds of 4 jobs, least cost"] <= costs["rounds of 1 job, least cost"]  # pooling helps


@pytest.mark.parametrize("stream", [(), ("--overlap",)], ids=["serial", "overlap"])
def test_the_emulated_device_runs_the_real_worker_and_accounts_for_every_token(stream):
    printed = run_bench("emulated_device.py", "--prompts", "16", "--n", "2", "--rate", "2000000", "--launch-ms", "20", *stream).stdout
    figures = json.loads(printed.strip().splitlines()[-1])
    assert figures["tokens"] > 16 * 2 * 8 and figures["device_seconds"] > 0 and figures["worker_seconds"] > 0
    # the reward worker's rounds read exactly the tokens the device alone reads: same rendering, same tokenizer
    assert re.search(rf"\(b\) \d+ rounds of [\d.]+ jobs, \d+ passes, {figures['tokens']} tokens", printed), printed


TWO_PROCESS_TREE = """
import multiprocessing, time

def engine_core_waits():
    time.sleep(60)

def frontend_waits():
    time.sleep(60)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=engine_core_waits).start()  # as vLLM starts its engine core
    frontend_waits()
"""


def test_a_hung_step_shows_the_stacks_of_every_process_it_started(tmp_path):
    """`hang_stacks`: a process and the one it spawned (as vLLM's engine core is) both write their threads' stacks
    to their log while they hang; a registered pid that belongs to another program now is never signalled."""
    import os
    import signal

    sys.path.insert(0, str(REPO / "bench"))
    from faults import wait_for
    from hang_stacks import PIDS_ENV, dump_stacks_of_children, registered_live_pids

    script, log = tmp_path / "tree.py", tmp_path / "tree.log"
    script.write_text(TWO_PROCESS_TREE)
    before = os.environ.get("PYTHONPATH")
    with dump_stacks_of_children(after=0.5, every=0.5) as folder:
        (folder / str(os.getpid())).touch()  # this process: its start-up environment lacks the folder
        with log.open("w") as output:
            process = subprocess.Popen([sys.executable, str(script)], stdout=output, stderr=subprocess.STDOUT)
        def hooked():
            found = registered_live_pids(folder)
            return found if len(found) >= 2 else None  # the child and the one it spawned (and multiprocessing's tracker)

        def dumped():
            return all(f"in {name}\n" in log.read_text() for name in ("engine_core_waits", "frontend_waits"))

        try:
            pids = wait_for(hooked, 30, "the hooked processes")
            assert process.pid in pids and os.getpid() not in pids
            wait_for(dumped, 30, "both processes' stacks in the log", interval=0.1)
        finally:
            wait_for(hooked, 10, "the spawned child, so that it is not left behind")
            for pid in registered_live_pids(folder):
                os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert os.environ.get("PYTHONPATH") == before and PIDS_ENV not in os.environ
    assert "Current thread 0x" in log.read_text() and 'File "' in log.read_text()
