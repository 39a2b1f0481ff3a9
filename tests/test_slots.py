"""A worker with several slots: one process, one loaded model, several jobs running at once, stopped cleanly."""

import signal

import torch
from conftest import rsample, write_jsonl
from faults import assert_exactly_once, prompts_that_got_candidates, running_entries, start, wait_for

from rsample.workers.common import defaults
from rsample.workers.common.config import ModelSettings
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.status import run_status
from rsample.workers.runtime.worker import default_slots

ROWS = [{"prompt": f"write a long story about the river number {i}"} for i in range(12)]


def test_default_slots_feed_vllm_and_let_a_reward_model_prepare_the_next_job_on_a_gpu():
    vllm, transformers = ModelSettings(generation_backend="vllm", reward_backend="vllm"), ModelSettings()
    assert default_slots("generate", vllm) == 2
    assert default_slots("generate", transformers) == 1
    assert default_slots("reward", vllm) == 1
    on_gpu = defaults.REWARD_SLOTS_ON_GPU if torch.cuda.is_available() else 1  # a CPU is the model's own device
    assert default_slots("reward", transformers, ["org/reward-model", "fn:my:reward"]) == on_gpu
    assert default_slots("reward", transformers, ["judge:org/judge"]) == on_gpu
    assert default_slots("reward", transformers, ["verify:math", "fn:my:reward"]) == 1  # no model: nothing to prepare for
    assert default_slots("reward", ModelSettings(generation_backend="echo", reward_backend="length")) == 1
    assert default_slots("both", vllm) == 1  # the straight line through the queues


def test_one_worker_runs_two_jobs_at_once_and_stops_on_sigterm(redis_server, redis_client, tiny_models, tmp_path):
    url = redis_server.url
    dataset = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), "--policy", tiny_models["policy"],
                     "--reward-model", tiny_models["reward"], "--n", "2", "--temperature", "1.0", "--max-new-tokens", "96",
                     "--batch-size", "1").stdout.strip()
    queue_name = RunKeys(run_id).generate_queue
    log, out = tmp_path / "processes.log", tmp_path / "pairs.jsonl"
    generator = start("worker", "generate", "--redis-url", url, "--slots", "2", log=log)
    scorer = start("worker", "reward", "--redis-url", url, log=log)
    coordinator = start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", log=log)

    def two_jobs_running():
        entries = running_entries(redis_client, queue_name)
        return len({entry.split(":")[0] for entry in entries}) == 2

    wait_for(two_jobs_running, 120, "two generation jobs running in the one worker")
    assert coordinator.wait(timeout=300) == 0, log.read_text()[-3000:]
    counts = assert_exactly_once(out, None, ROWS)
    assert prompts_that_got_candidates(counts) == len(ROWS)
    workers = {w.decode() for w in redis_client.smembers("rq:workers")}
    assert sum(f"-{generator.pid}" in name for name in workers) == 2  # the main loop and one slot, one process
    generating = next(queue for queue in run_status(redis_client, run_id).queues if queue.name == queue_name)
    assert generating.workers == 1  # `rsample status` counts processes, not their slots
    generator.send_signal(signal.SIGTERM)
    scorer.send_signal(signal.SIGTERM)
    assert generator.wait(timeout=20) == 0 and scorer.wait(timeout=20) == 0, log.read_text()[-3000:]
    assert not any(f"-{generator.pid}" in w.decode() for w in redis_client.smembers("rq:workers"))


def test_a_job_timeout_reaches_a_slot_that_waits_on_the_engine():
    """A slot's timeout is raised into its thread by a timer; a job waiting for a stuck engine must still get it."""
    import threading
    from concurrent.futures import Future

    from rq.timeouts import JobTimeoutException, TimerDeathPenalty

    from rsample.workers.backends.waiting import wait_interruptibly

    caught = []

    def slot_job():
        try:
            with TimerDeathPenalty(1, JobTimeoutException):
                wait_interruptibly(Future(), poll=0.1)  # an engine that never answers
        except JobTimeoutException as exc:
            caught.append(exc)

    thread = threading.Thread(target=slot_job, daemon=True)
    thread.start()
    thread.join(timeout=15)
    assert not thread.is_alive() and len(caught) == 1
