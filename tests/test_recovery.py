"""What the coordinator does when Redis comes back older than it was: prompts handed out but held by no job are
fed again, and counters that say the window is full when nothing is in flight are set right. In-process, on a
real Redis; the end-to-end case is `test_faults.test_redis_back_from_an_older_snapshot_loses_nothing`."""

from __future__ import annotations

import time

import pytest
from conftest import CHAT_ROWS, write_jsonl

from rsample.producer.driver.coordinator import Coordinator
from rsample.producer.registration import register_run
from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.run_state import load_run


def make_coordinator(client, tmp_path, rows=CHAT_ROWS) -> Coordinator:
    """A coordinator of a small echo run with a heartbeat TTL of 2 s, on `client`."""
    dataset = write_jsonl(tmp_path / "chat.jsonl", rows)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",), prompts_per_job=2,
                       jobs=JobSettings(max_in_flight=4, heartbeat_ttl=2),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(client, config)
    return Coordinator(client, config, tmp_path / "pairs.jsonl")


@pytest.fixture
def coordinator(redis_client, tmp_path):
    coordinator = make_coordinator(redis_client, tmp_path)
    yield coordinator
    coordinator.close()


def idle_long_enough(coordinator):
    coordinator.recover_lost_work()  # notices the idle pipeline
    coordinator._idle_since = time.monotonic() - 3600  # ...and it stays idle past the grace period
    coordinator.recover_lost_work()


def test_prompts_held_by_no_job_are_fed_again(coordinator, redis_client):
    queue = make_queue(redis_client, RunKeys(coordinator.config.run_id).generate_queue)
    assert coordinator.feeder.top_up() == 4
    handed = {p["prompt_id"] for job in queue.jobs for p in job.args[2]}
    queue.empty()  # Redis came back from a snapshot taken before these jobs existed
    coordinator.recover_lost_work()
    assert queue.count == 0  # not at once: a job may be between two registries
    idle_long_enough(coordinator)
    again = queue.jobs
    assert {p["prompt_id"] for job in again for p in job.args[2]} == handed
    assert all("-again" in job.args[1] for job in again)
    assert coordinator.feeder.in_flight() == 4


def test_rows_the_feeder_settled_itself_are_settled_again_when_redis_lost_their_outcomes(redis_client, tmp_path):
    """A bad row's or a duplicate's outcome exists only as a message on the ready stream until it is written: a Redis
    back from an older snapshot lost it, and with it the rows' outcomes for good (the run waited forever)."""
    from faults import outcome_rows

    coordinator = make_coordinator(redis_client, tmp_path, rows=[{"prompt": "a"}, {"prompt": ""}, {"prompt": "a"}, {"prompt": "b"}])
    try:
        keys = RunKeys(coordinator.config.run_id)
        assert coordinator.feeder.top_up() == 2  # rows 0 and 3; the feeder settles rows 1 and 2 itself
        redis_client.delete(keys.ready)  # Redis came back from a snapshot taken before all that
        make_queue(redis_client, keys.generate_queue).empty()
        idle_long_enough(coordinator)
        while coordinator.collector.step(block_ms=None):
            pass
        outcomes = {row["row_index"]: (row["outcome"], row["reason"]) for row in outcome_rows(coordinator.ledger.out)}
        assert outcomes == {1: ("skipped", "empty content"), 2: ("duplicate", "same prompt as row 0")}
        assert {p["prompt_id"] for job in make_queue(redis_client, keys.generate_queue).jobs for p in job.args[2]} == {
            coordinator.feeder.handed[0].prompt_id, coordinator.feeder.handed[3].prompt_id}  # and the prompts fed again
    finally:
        coordinator.close()


def test_a_coordinator_started_after_the_loss_settles_those_rows_too(redis_client, tmp_path):
    """The same loss found by a coordinator started afterwards: its feeder reads the rows behind the cursor again."""
    from faults import outcome_rows

    rows = [{"prompt": "a"}, {"prompt": ""}, {"prompt": "a"}, {"prompt": "b"}]
    first = make_coordinator(redis_client, tmp_path, rows=rows)
    first.feeder.top_up()
    run_id = first.config.run_id
    first.close()
    redis_client.delete(RunKeys(run_id).ready)  # lost while no coordinator ran, with the jobs
    make_queue(redis_client, RunKeys(run_id).generate_queue).empty()
    coordinator = Coordinator(redis_client, load_run(redis_client, run_id), tmp_path / "pairs.jsonl")
    try:
        idle_long_enough(coordinator)
        coordinator.feeder.top_up()  # a coordinator's step feeds what its recovery put back
        while coordinator.collector.step(block_ms=None):
            pass
        outcomes = {row["row_index"]: row["outcome"] for row in outcome_rows(coordinator.ledger.out)}
        assert outcomes == {1: "skipped", 2: "duplicate"}
    finally:
        coordinator.close()


def test_a_window_full_of_prompts_long_written_is_set_right(coordinator, redis_client):
    keys = RunKeys(coordinator.config.run_id)
    redis_client.hset(keys.stats, mapping={"prompts_enqueued": 10, "prompts_returned": 6})  # the counters of an older snapshot
    assert coordinator.feeder.top_up() == 0  # the window looks full
    idle_long_enough(coordinator)
    assert coordinator.feeder.in_flight() == 0
    assert coordinator.feeder.top_up() == 4


def test_a_busy_pipeline_is_left_alone(coordinator, redis_client):
    queue = make_queue(redis_client, RunKeys(coordinator.config.run_id).generate_queue)
    coordinator.feeder.top_up()
    idle_long_enough(coordinator)
    assert queue.count == 2  # the jobs are still there: nothing was fed twice


def test_a_batch_whose_job_and_payload_are_gone_is_fed_again_while_the_run_goes_on(coordinator, redis_client):
    keys = RunKeys(coordinator.config.run_id)
    queue = make_queue(redis_client, keys.generate_queue)
    coordinator.feeder.top_up()
    first, second = queue.jobs
    queue.remove(first)
    first.delete()  # this batch's job is gone (and it never wrote a payload); the other one is still queued
    coordinator.recover_lost_batches()
    assert queue.job_ids == [second.id]  # not at once
    coordinator._missing_since = {batch: since - 3600 for batch, since in coordinator._missing_since.items()}
    coordinator.recover_lost_batches()
    again = [job for job in queue.jobs if job.id != second.id]
    assert len(again) == 1 and "-again" in again[0].args[1]
    assert [p["prompt_id"] for p in again[0].args[2]] == [p["prompt_id"] for p in first.args[2]]
    assert coordinator.feeder.in_flight() == 4  # the lost two were written off, and fed again


def test_a_run_redis_lost_is_fed_again_under_batch_ids_of_its_own(coordinator, redis_client):
    """Redis restarted empty re-fed the run under the batch ids of the first feed: a scoring job that read a batch
    before the loss and wrote after it filed its scores under the batch made again, beside other texts."""
    queue = make_queue(redis_client, RunKeys(coordinator.config.run_id).generate_queue)
    coordinator.feeder.top_up()
    before = {job.args[1]: [p["prompt_id"] for p in job.args[2]] for job in queue.jobs}
    redis_client.flushall()  # what Redis lost
    coordinator.ensure_run()
    coordinator.feeder.top_up()
    after = {job.args[1]: [p["prompt_id"] for p in job.args[2]] for job in queue.jobs}
    assert sorted(before.values()) == sorted(after.values()) and len(before) == 2  # the same prompts, fed again
    assert not set(before) & set(after)


def test_a_run_redis_lost_while_no_coordinator_was_up_gets_batch_ids_of_its_own(redis_client, tmp_path):
    """As above, where the run is made again from its output files (`aggregate` or `resume` after the loss)."""
    from rsample.producer.registration import load_or_recreate

    first = make_coordinator(redis_client, tmp_path)
    queue = make_queue(redis_client, RunKeys(first.config.run_id).generate_queue)
    first.feeder.top_up()
    before = {job.args[1] for job in queue.jobs}
    first.close()
    redis_client.flushall()  # what Redis lost, while no coordinator ran
    config = load_or_recreate(redis_client, None, tmp_path / "pairs.jsonl")
    again = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
    try:
        again.feeder.top_up()
        after = {job.args[1] for job in queue.jobs}
    finally:
        again.close()
    assert len(before) == 2 and after and not before & after, (before, after)


def test_a_run_redis_lost_while_no_coordinator_was_up_is_recreated_from_its_output(redis_server, redis_client, tmp_path):
    """Redis restarted empty while no coordinator ran: the output files keep the run's settings, and `resume` (or
    `aggregate`) registers the run again under its id and goes on, here with rows appended to the dataset since."""
    from conftest import read_jsonl, rsample

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    echo = ["--policy", "echo", "--backend", "echo", "--reward-model", "r", "--reward-backend", "length", "--no-progress"]
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *echo, "--run-id", "kept", "--out", str(out))
    assert len(read_jsonl(out)) == 7
    made = load_run(redis_client, "kept").created_at
    assert read_jsonl(out.with_name("pairs.outcomes.jsonl"))[0]["created_at"] == made > 0
    redis_client.flushall()  # what Redis lost
    with dataset.open("a") as handle:
        handle.write('{"prompt": "a row added while Redis was down"}\n')
    result = rsample("resume", "--redis-url", redis_server.url, "--run", "kept", "--out", str(out), "--no-progress")
    assert "this Redis has no run kept: re-created it from the settings kept with" in result.stderr
    pairs = read_jsonl(out)
    assert len(pairs) == len({p["prompt_id"] for p in pairs}) == 8
    assert pairs[-1]["messages"][0]["content"] == "a row added while Redis was down"
    assert load_run(redis_client, "kept").created_at == made  # the moment its chat templates show (their dates) is kept
    other = rsample("resume", "--redis-url", redis_server.url, "--run", "another", "--out", str(out), check=False)
    assert other.returncode == 2 and "no run 'another' in this Redis" in other.stderr  # the files are not that run's


def test_a_redis_that_evicts_is_named_as_the_cause_and_the_summary_says_what_its_completions_count(redis_client, tmp_path, caplog):
    """Under an evicting maxmemory-policy, Redis dropped the run's keys and the coordinator blamed a restart without
    persistence; the summary's completions (those counted since) read as the run's."""
    redis_client.config_set("maxmemory", "1gb")
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    with caplog.at_level("WARNING"):
        coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
        try:
            assert "Redis evicts keys when it is full (maxmemory-policy allkeys-lru)" in caplog.text
            redis_client.delete(RunKeys(config.run_id).config)  # evicted
            coordinator.ensure_run()
            assert "evicted under maxmemory-policy allkeys-lru? set noeviction" in caplog.text
            assert "restarted without persistence" not in caplog.text
            assert "counted since Redis lost the run's counters" in "\n".join(coordinator.summary().lines())
            from rsample.workers.runtime.status import run_status

            [completions] = [line for line in run_status(redis_client, config.run_id).lines() if line.startswith("  completions")]
            assert completions.endswith("; counted since Redis lost the run's counters 0 s ago"), completions  # `rsample status` too
        finally:
            coordinator.close()


def test_jobs_no_worker_takes_are_said_in_the_coordinators_log_and_not_at_every_step(coordinator, monkeypatch, caplog):
    """A coordinator started before its workers (or whose workers died) waited in silence with --no-progress."""
    from rsample.workers.common import defaults

    monkeypatch.setattr(defaults, "UNSERVED_GRACE", 0.0)
    coordinator.feeder.top_up()
    with caplog.at_level("WARNING"):
        coordinator._say_unserved()
        coordinator._say_unserved()  # within UNSERVED_REPEAT: not again
    queue = RunKeys(coordinator.config.run_id).generate_queue
    said = [r.getMessage() for r in caplog.records if "no worker has served" in r.getMessage()]
    assert len(said) == 1 and f"{queue} (2 jobs)" in said[0] and f"rsample worker ROLE --run {coordinator.config.run_id}" in said[0]


def test_after_an_outage_the_coordinator_waited_through_the_sweep_gives_workers_one_heartbeat_ttl(coordinator, monkeypatch):
    """Redis paused past the heartbeat TTL: the sweep found every running job's heartbeat stopped, requeued them and spent
    a retry of each, though their workers were alive and beat again as soon as Redis was back. A flapping Redis must not
    hold the sweep back for ever, though: never more than two TTLs in a row."""
    swept = []
    monkeypatch.setattr(coordinator, "sweep", lambda: swept.append(time.monotonic()))
    ttl = coordinator.config.jobs.heartbeat_ttl
    coordinator.step()
    assert len(swept) == 1
    coordinator._last_sweep = 0.0
    coordinator._note_own_outage(time.monotonic() - 10)  # a step whose commands waited 10 s for Redis
    coordinator.step()
    assert len(swept) == 1  # not now
    assert coordinator._sweep_not_before > time.monotonic() + ttl / 2
    coordinator._sweep_not_before = time.monotonic() - 0.01  # one TTL later
    coordinator.step()
    assert len(swept) == 2  # live workers have beaten again: what still looks stopped is dead

    first = time.monotonic()
    for _ in range(3):  # steps that keep waiting for Redis push the sweep back, up to two TTLs from the first
        coordinator._note_own_outage(time.monotonic() - 10)
        time.sleep(ttl * 0.9)
    assert coordinator._sweep_not_before <= first + 2 * ttl + 0.1


def test_a_job_of_a_live_worker_keeps_its_retry_through_a_paused_redis(redis_server, tmp_path):
    """A paused Redis (SIGSTOP, a VM pause) makes commands block, not fail: the coordinator's step waits through it, and
    the first sweep after it found the live worker's heartbeat expired and spent a retry of its job."""
    import os
    import signal
    import threading

    from rq.executions import Execution
    from rq.job import JobStatus

    from rsample.workers.runtime.connection import connect

    client = connect(redis_server.url)
    coordinator = make_coordinator(client, tmp_path)
    try:
        coordinator.feeder.top_up()
        queue = make_queue(client, RunKeys(coordinator.config.run_id).generate_queue)
        job = queue.jobs[0]
        retries = job.retries_left
        queue.remove(job)  # a live worker took it
        with client.pipeline() as pipe:
            job.set_status(JobStatus.STARTED, pipeline=pipe)
            Execution.create(job, ttl=2, pipeline=pipe, worker_name="w")
            pipe.execute()
        pid = redis_server.process.pid
        os.kill(pid, signal.SIGSTOP)  # paused past the TTL: the worker's beats block as the coordinator's commands do
        threading.Timer(4.0, os.kill, (pid, signal.SIGCONT)).start()
        coordinator._last_sweep = 0.0
        coordinator.step()  # waits through the pause
        coordinator._last_sweep = 0.0
        coordinator.step()  # the first sweep after it: the worker's next beat is due within the TTL
        job.refresh()
        assert job.retries_left == retries
    finally:
        coordinator.close()
        client.close()


def test_a_local_run_resumed_in_a_later_session_keeps_the_moment_it_was_made(redis_server, redis_client, tmp_path):
    """`rsample run`'s embedded Redis is new at every session, so the run is registered again each time: it used to be
    made anew, and chat templates that show the date (Llama 3.2's, gpt-oss's, ...) rendered the rows still to come
    with the day of the resume, not the day of the rows already written."""
    from conftest import read_jsonl, rsample

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    echo = ["--policy", "echo", "--backend", "echo", "--reward-model", "r", "--reward-backend", "length", "--no-progress"]
    rsample("run", "--dataset", str(dataset), *echo, "--out", str(out))  # the embedded Redis, gone with the session
    header, before = read_jsonl(out.with_name("pairs.outcomes.jsonl"))[0], len(read_jsonl(out))
    time.sleep(1.1)
    with dataset.open("a") as handle:
        handle.write('{"prompt": "a row added for the next session"}\n')
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *echo, "--out", str(out))  # another Redis
    assert load_run(redis_client, header["rsample_run"]).created_at == header["created_at"] < time.time() - 1
    assert len(read_jsonl(out)) == before + 1
    redis_client.flushall()  # --overwrite of the same run's files resumes them, and keeps its moment too
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), *echo, "--out", str(out), "--overwrite")
    assert load_run(redis_client, header["rsample_run"]).created_at == header["created_at"]


def test_a_run_enqueued_anew_where_its_output_began_earlier_is_said(redis_server, redis_client, tmp_path):
    """`rsample enqueue` again after Redis lost the run makes it anew, at another moment, which chat templates show as
    the date: the coordinator says so and how to keep the first."""
    from conftest import read_jsonl, rsample

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    echo = ["--dataset", str(dataset), "--policy", "echo", "--backend", "echo", "--reward-model", "r", "--reward-backend", "length"]
    rsample("run", "--redis-url", redis_server.url, *echo, "--out", str(out), "--no-progress")
    first = read_jsonl(out.with_name("pairs.outcomes.jsonl"))[0]["created_at"]
    redis_client.flushall()
    time.sleep(1.1)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, *echo).stdout.strip()
    assert load_run(redis_client, run_id).created_at > first
    again = rsample("run", "--redis-url", redis_server.url, *echo, "--out", str(out), "--no-progress")
    assert f"run {run_id} in this Redis was made on " in again.stderr and "`rsample forget` it, then `rsample resume --out" in again.stderr


def test_a_job_put_back_after_its_run_finished_writes_nothing(redis_server, redis_client, tmp_path):
    """A worker killed holding a job leaves it in RQ's intermediate list, which RQ's maintenance puts back on the queue
    later, after the run finished: it generated again and wrote a payload and scores that nothing read nor expired."""
    from conftest import read_jsonl, rsample

    from rsample.workers.common.messages import PromptRecord
    from rsample.workers.runtime.queues import enqueue_generation

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    out = tmp_path / "pairs.jsonl"
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
            "--backend", "echo", "--reward-backend", "length", "--out", str(out), "--no-progress")
    run_id = read_jsonl(out.with_name("pairs.outcomes.jsonl"))[0]["rsample_run"]
    config, keys = load_run(redis_client, run_id), RunKeys(run_id)
    generated = redis_client.hget(keys.stats, "rows_generated")
    stale = PromptRecord(prompt_id="stale", messages=[{"role": "user", "content": "list three numbers"}], row_index=3)
    enqueue_generation(redis_client, config, "r3", [stale.to_dict()])
    rsample("worker", "generate", "--redis-url", redis_server.url, "--run", run_id, "--burst")
    assert not redis_client.exists(keys.batch("r3"), keys.scores("r3"))
    assert redis_client.hget(keys.stats, "rows_generated") == generated
    assert make_queue(redis_client, keys.score_queue(0)).count == 0


def test_a_scored_batch_whose_scores_redis_evicted_is_scored_again_not_skipped(redis_server, redis_client, tmp_path):
    """Under an evicting maxmemory-policy, Redis dropped a ready batch's scores and kept its payload: the collector
    set the batch aside as unprocessable (`KeyError: b'0'`), skipping its rows for good."""
    from conftest import read_jsonl, rsample
    from faults import outcome_rows

    coordinator = make_coordinator(redis_client, tmp_path)
    run_id, keys = coordinator.config.run_id, RunKeys(coordinator.config.run_id)
    try:
        coordinator.feeder.top_up()  # two jobs of two prompts
        rsample("worker", "both", "--redis-url", redis_server.url, "--run", run_id, "--burst")
        scored = redis_client.keys(keys.scores("*"))
        assert len(scored) == 2 and redis_client.xlen(keys.ready) == 2
        redis_client.delete(scored[0])  # evicted
        assert coordinator.collector.step(block_ms=None) == 2  # the other batch's two rows
        assert make_queue(redis_client, keys.score_queue(0)).count == 1  # the evicted one's scoring, again
        rsample("worker", "reward", "--redis-url", redis_server.url, "--run", run_id, "--burst")
        assert coordinator.collector.step(block_ms=None) == 2
    finally:
        coordinator.close()
    outcomes = outcome_rows(tmp_path / "pairs.jsonl")
    assert sorted(o["row_index"] for o in outcomes) == [0, 1, 2, 3]
    assert not [o for o in outcomes if o["outcome"] == "skipped"], outcomes
    assert len(read_jsonl(tmp_path / "pairs.jsonl")) == sum(o["outcome"] == "pair" for o in outcomes) > 0
