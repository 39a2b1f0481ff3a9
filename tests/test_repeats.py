"""A job that runs twice keeps its first result, and a ready message that cannot be processed is set aside, never
retried forever. The job functions run in this process against a real Redis, with a generator whose texts change
on every run (as GPU sampling is not bit-reproducible)."""

from __future__ import annotations

import json

import pytest
from conftest import CHAT_ROWS, read_jsonl, write_jsonl

from rsample.producer.driver.coordinator import Coordinator
from rsample.producer.registration import register_run
from rsample.workers.backends.base import Completion, PromptCompletions
from rsample.workers.backends.zero_cost import LengthReward
from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig, SamplingConfig
from rsample.workers.common.messages import SKIPPED
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.stages.generate import generate_batch
from rsample.workers.stages.score import score_batch


class ChangingGenerator:
    """Different texts (of different lengths) on every run of the same job."""

    def __init__(self):
        self.runs = 0

    def generate(self, prompts, sampling, seed, progress=None):
        self.runs += 1
        return [PromptCompletions([Completion(f"run {self.runs} answer " + "x" * (k + 4 * self.runs), 3, "stop") for k in range(sampling.n)])
                for _ in prompts]


@pytest.fixture
def run(redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("len-a", "len-b"), prompts_per_job=16,
                       sampling=SamplingConfig(n=3), models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl")
    coordinator.feeder.top_up()
    job = make_queue(redis_client, RunKeys(config.run_id).generate_queue).jobs[0]
    worker_context.install(worker_context.WorkerContext(redis_client, config, ChangingGenerator(), {0: LengthReward(), 1: LengthReward()}))
    yield config, coordinator, job
    worker_context.install(None)
    coordinator.close()


def settle(coordinator, steps=3):
    for _ in range(steps):
        coordinator.collector.step(block_ms=50)


def test_a_worker_killed_as_it_hands_its_batch_on_leaves_the_runs_counts_whole(run, redis_client, monkeypatch):
    """Its result stored, then killed before counting it: the requeued job found the result and counted nothing, so the
    run's completions and tokens stayed short. The result and its counts are now one Redis step."""
    import redis

    config, coordinator, job = run
    run_id, batch_id, prompts = job.args
    batch_key = RunKeys(run_id).batch(batch_id)
    real_set = redis.Redis.set

    def dies_after_storing_the_batch(client, name, *args, **kwargs):
        result = real_set(client, name, *args, **kwargs)
        if name == batch_key:
            monkeypatch.setattr(redis.Redis, "set", real_set)  # the next worker lives
            raise SystemExit("killed")  # as SIGKILL right after the result reached Redis
        return result

    before = int(redis_client.hget(RunKeys(run_id).stats, "rows_generated") or 0)  # the feeder's: a duplicate row
    monkeypatch.setattr(redis.Redis, "set", dies_after_storing_the_batch)
    try:
        generate_batch(run_id, batch_id, prompts)
    except SystemExit:
        generate_batch(run_id, batch_id, prompts)  # requeued, on another worker
    stats = redis_client.hgetall(RunKeys(run_id).stats)
    assert (int(stats[b"rows_generated"]) - before, int(stats[b"completions_generated"])) == (len(prompts), 3 * len(prompts))
    assert int(stats[b"tokens_generated"]) == 3 * 3 * len(prompts)


def test_a_job_that_runs_twice_keeps_its_first_result(run, tmp_path):
    config, coordinator, job = run
    run_id, batch_id, prompts = job.args
    generate_batch(run_id, batch_id, prompts)
    score_batch(run_id, batch_id, 0)  # reward model 0 scores the first texts...
    repeat = generate_batch(run_id, batch_id, prompts)  # ...then the job runs again (requeued after a lost heartbeat)
    assert repeat["repeat"] is True
    score_batch(run_id, batch_id, 1)  # ...and reward model 1 scores whatever the payload now holds
    settle(coordinator)
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert len(pairs) == 7
    for pair in pairs:
        for side in ("chosen", "rejected"):
            text = pair[side][-1]["content"]
            assert text.startswith("run 1 ")  # the first result won
            assert pair[f"{side}_score"] == {"len-a": len(text), "len-b": len(text)}  # each score is of its own text
    scores = read_jsonl(tmp_path / "scores.jsonl")
    assert all(row["scores"] == {"len-a": len(row["completion"]), "len-b": len(row["completion"])} for row in scores)


def test_an_unprocessable_ready_message_is_set_aside_not_retried(run, redis_client, tmp_path):
    """A payload that cannot be read is set aside (it would crash every coordinator, restart after restart); a readable
    batch handed on without one model's scores (evicted by Redis, say) is scored again by that model, not set aside
    with its prompts skipped."""
    config, coordinator, job = run
    run_id, batch_id, prompts = job.args
    keys = RunKeys(run_id)
    generate_batch(run_id, batch_id, prompts)
    score_batch(run_id, batch_id, 0)
    redis_client.xadd(keys.ready, {"batch_id": batch_id})  # handed on before reward model 1 scored it
    redis_client.set(keys.batch("garbled"), b"{not json")
    redis_client.xadd(keys.ready, {"batch_id": "garbled"})
    queued = [make_queue(redis_client, keys.score_queue(m)).count for m in (0, 1)]  # what generate_batch enqueued
    settle(coordinator)  # does not raise, and does not stop
    assert redis_client.xlen(keys.ready) == 0
    aside = [json.loads(entry) for entry in redis_client.lrange(keys.unprocessable, 0, -1)]
    assert [entry["fields"]["batch_id"] for entry in aside] == ["garbled"]
    assert aside[0]["error"].startswith("unprocessable result: ")
    assert redis_client.hget(keys.stats, "unprocessable") == b"1"
    assert [make_queue(redis_client, keys.score_queue(m)).count for m in (0, 1)] == queued  # model 1's job is still queued
    make_queue(redis_client, keys.score_queue(1)).empty()  # ...as if it had run and its scores were lost
    redis_client.xadd(keys.ready, {"batch_id": batch_id})
    settle(coordinator)
    assert [make_queue(redis_client, keys.score_queue(m)).count for m in (0, 1)] == [queued[0], 1]  # model 1 again
    score_batch(run_id, batch_id, 1)  # that job, as a reward worker runs it
    settle(coordinator)
    assert redis_client.llen(keys.unprocessable) == 1  # set aside once, not retried
    written = read_jsonl(tmp_path / "pairs.outcomes.jsonl")[1:]
    assert {p["prompt_id"] for p in prompts} <= {o["prompt_id"] for o in written}  # the batch's prompts, none skipped
    assert not [o for o in written if o["outcome"] == SKIPPED]


def test_a_batch_delivered_twice_in_one_read_comes_back_once(run, redis_client):
    config, coordinator, job = run
    run_id, batch_id, prompts = job.args
    keys = RunKeys(run_id)
    generate_batch(run_id, batch_id, prompts)
    score_batch(run_id, batch_id, 0)
    score_batch(run_id, batch_id, 1)  # the last model hands the batch on...
    redis_client.xadd(keys.ready, {"batch_id": batch_id})  # ...and a repeated scoring job hands it on again
    enqueued = int(redis_client.hget(keys.stats, "prompts_enqueued"))
    settle(coordinator)
    assert int(redis_client.hget(keys.stats, "prompts_returned")) == enqueued == len(prompts)
    assert coordinator.feeder.in_flight() == 0
