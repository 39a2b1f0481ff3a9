"""`rsample status`'s recent pace: the coordinator's samples of the counters in Redis, rates over the last minutes,
and the time left at that pace rather than since the run was made."""

import json
import time

import pytest

from rsample.workers.common.config import DataSelection, RunConfig
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.pace import PaceSample, read_samples, recent_pace, record_sample, take_sample
from rsample.workers.runtime.run_state import save_run
from rsample.workers.runtime.status import run_status


def samples_every_10_s(now: float, generated_per_step: list[float]) -> list[PaceSample]:
    """Newest first, one per 10 s ending at `now`; tokens 100 per row, written 2 rows behind generated."""
    rows, out = 0.0, []
    for step, added in enumerate(generated_per_step):
        rows += added
        out.append(PaceSample(at=now - 10 * (len(generated_per_step) - 1 - step), generated=rows, written=int(max(0, rows - 2)),
                              tokens=int(100 * rows)))
    return out[::-1]


def test_the_pace_is_that_of_the_window_not_of_the_whole_run():
    now = 10_000.0
    # 40 samples (390 s): 5 rows per 10 s for the first 20 steps, then 1 per 10 s
    samples = samples_every_10_s(now, [0] + [5] * 19 + [1] * 20)
    pace = recent_pace(samples, now, window=100)
    assert pace.seconds == 100 and pace.generated_per_s == pytest.approx(0.1) and pace.tokens_per_s == pytest.approx(10)
    assert pace.written_per_s == pytest.approx(0.1)
    everything = recent_pace(samples, now, window=10_000)
    assert everything.seconds == 390 and everything.generated_per_s == pytest.approx((19 * 5 + 20) / 390)


def test_no_pace_when_nobody_samples_now_or_the_samples_span_too_little():
    now = 10_000.0
    samples = samples_every_10_s(now - 600, [1] * 30)  # the coordinator stopped ten minutes ago
    assert recent_pace(samples, now) is None
    assert recent_pace(samples_every_10_s(now, [1, 1]), now) is None  # 10 s of samples
    assert recent_pace([], now) is None


def test_a_counter_that_went_back_ends_the_span():
    """Redis lost the run and the coordinator started its counters afresh: the samples from before do not count."""
    now = 10_000.0
    before = samples_every_10_s(now - 100, [50] * 10)  # up to 500 rows, ending 100 s ago
    after = samples_every_10_s(now, [0] + [2] * 9)  # from 0 again: 2 rows per 10 s over the last 90 s
    pace = recent_pace(after + before, now, window=10_000)
    assert pace.seconds == 90 and pace.generated_per_s == pytest.approx(0.2)


def test_status_shows_the_recent_pace_and_the_time_left_at_it(redis_client):
    config = RunConfig(run_id="pace1", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=time.time() - 86_400)
    save_run(redis_client, config)
    keys = RunKeys(config.run_id)
    redis_client.set(keys.coordinator_lock, "a coordinator")  # the pace is a coordinator's: it holds the run
    redis_client.hset(keys.stats, mapping={"rows_total": 1000, "rows_generated": 0, "rows_written": 0, "tokens_generated": 0})
    now = time.time()
    start = take_sample(redis_client, config.run_id, now=now - 120)
    assert start == PaceSample(at=now - 120, generated=0, written=0, tokens=0)
    record_sample(redis_client, config.run_id, start)
    redis_client.hset(keys.stats, mapping={"rows_generated": 240, "rows_written": 200, "tokens_generated": 48_000})
    record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=now))
    assert [s.generated for s in read_samples(redis_client, config.run_id)] == [240, 0]
    status = run_status(redis_client, config.run_id)
    # 240 rows generated in 120 s: 2 rows/s, 760 left: 380 s; but 200 written: 1.67 rows/s, 800 left: 480 s, the slower
    # stage's time; since the run was made (a day ago) it would say about 4.8 days
    assert status.recent.generated_per_s == pytest.approx(2.0, rel=1e-3) and status.eta_seconds == pytest.approx(480, rel=1e-3)
    text = "\n".join(status.lines())
    assert "last 2 min 00 s: generated 2.00/s, written 1.67/s, tokens 400.0/s" in text
    assert "about 8 min 00 s left at the last 2 min 00 s's pace" in text
    assert json.loads(json.dumps(status.to_dict()))["recent"]["tokens_per_s"] == pytest.approx(400, rel=1e-3)


def test_the_recent_pace_runs_up_to_the_counters_as_they_are_not_to_the_last_sample(redis_client):
    """The coordinator samples every 10 s: a status between two samples said "written 0.00/s" under a count that had
    just gone from 43 to 99 (the samples' span ended before it), and a time left of 12 min for a run that ended 25 s on."""
    config = RunConfig(run_id="pace5", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=time.time() - 600)
    save_run(redis_client, config)
    keys = RunKeys(config.run_id)
    redis_client.set(keys.coordinator_lock, "a coordinator")
    redis_client.hset(keys.stats, mapping={"rows_total": 244, "rows_generated": 100, "rows_written": 43, "tokens_generated": 9000})
    now = time.time()
    for at in (now - 38, now - 8):  # 30 s of samples, nothing written between them
        record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=at))
    redis_client.hset(keys.stats, mapping={"rows_generated": 160, "rows_written": 99, "tokens_generated": 15_000})
    status = run_status(redis_client, config.run_id)
    # from the oldest sample (38 s ago) to now: 56 rows written, 60 generated
    assert status.recent.seconds == pytest.approx(38, abs=1)
    assert status.recent.written_per_s == pytest.approx(56 / status.recent.seconds, rel=1e-6)
    assert status.recent.generated_per_s == pytest.approx(60 / status.recent.seconds, rel=1e-6)
    assert status.eta_seconds == pytest.approx((244 - 99) * status.recent.seconds / 56, rel=1e-6)


@pytest.mark.parametrize("skew", [-15.0, 15.0])
def test_the_recent_pace_is_measured_on_redis_clock_not_on_the_status_machines(redis_client, monkeypatch, skew):
    """The coordinator stamps its samples; `status` runs on any machine: its own clock, 15 s behind, made 1 row/s 1.30/s."""
    import rsample.workers.runtime.status as status_module
    from rsample.workers.runtime.redis_clock import redis_now

    config = RunConfig(run_id="pace6", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=time.time() - 600)
    save_run(redis_client, config)
    keys = RunKeys(config.run_id)
    redis_client.set(keys.coordinator_lock, "a coordinator")
    redis_client.hset(keys.stats, mapping={"rows_total": 1000, "rows_generated": 0, "rows_written": 0})
    now = redis_now(redis_client)
    record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=now - 40))
    redis_client.hset(keys.stats, mapping={"rows_generated": 40, "rows_written": 40})
    record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=now))
    real_time = time.time
    monkeypatch.setattr(status_module.time, "time", lambda: real_time() + skew)
    recent = run_status(redis_client, config.run_id).recent
    assert recent.generated_per_s == pytest.approx(1.0, rel=0.02) and recent.seconds == pytest.approx(40, abs=0.5)


def test_a_stalled_run_says_so_instead_of_a_time_left(redis_client):
    config = RunConfig(run_id="pace2", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=time.time() - 600)
    save_run(redis_client, config)
    redis_client.hset(RunKeys(config.run_id).stats, mapping={"rows_total": 100, "rows_generated": 40})
    now = time.time()
    for at in (now - 60, now):
        record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=at))
    status = run_status(redis_client, config.run_id)
    assert status.eta_seconds is None
    assert "nothing generated or written in the last 1 min 00 s" in "\n".join(status.lines())


def test_a_run_whose_scoring_stalls_after_generation_ended_says_so(redis_client):
    """Every row generated, none scored (no reward worker): no time left ("about 0 s" was wrong), and the stalled stage."""
    config = RunConfig(run_id="pace3", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=time.time() - 600)
    save_run(redis_client, config)
    redis_client.hset(RunKeys(config.run_id).stats, mapping={"rows_total": 40, "rows_generated": 40, "feed_done": 1})
    now = time.time()
    for at in (now - 60, now):
        record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=at))
    status = run_status(redis_client, config.run_id)
    assert status.eta_seconds is None and status.stalled_stage() == "written"
    text = "\n".join(status.lines())
    assert "nothing written in the last 1 min 00 s" in text and "left at" not in text


def test_a_run_starting_up_has_a_time_left_from_its_generation_and_no_stall(redis_client):
    """Generation moves, nothing is written yet (the first batches are being scored): that is no stall."""
    config = RunConfig(run_id="pace4", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=time.time() - 120)
    save_run(redis_client, config)
    keys = RunKeys(config.run_id)
    redis_client.set(keys.coordinator_lock, "a coordinator")  # the pace is a coordinator's: it holds the run
    redis_client.hset(keys.stats, mapping={"rows_total": 100, "rows_generated": 0})
    now = time.time()
    record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=now - 60))
    redis_client.hset(keys.stats, "rows_generated", 30)
    record_sample(redis_client, config.run_id, take_sample(redis_client, config.run_id, now=now))
    status = run_status(redis_client, config.run_id)
    assert status.stalled_stage() is None and status.eta_seconds == pytest.approx(140, rel=1e-3)  # 70 rows left at 0.5/s
    assert "nothing" not in "\n".join(status.lines())
    from rsample.workers.runtime.queues import make_queue

    make_queue(redis_client, keys.generate_queue).enqueue("rsample.workers.stages.generate.generate_batch", "pace4", "b1", [])
    waiting = run_status(redis_client, config.run_id)  # its workers are gone: the recent pace promises what nobody does
    assert waiting.eta_seconds is None and waiting.to_dict()["unserved_queues"] == [keys.generate_queue]
    assert (f"  no worker serves {keys.generate_queue}: its 1 jobs wait (start `rsample workers`, or `rsample worker`)"
            in waiting.lines())
    make_queue(redis_client, keys.generate_queue).empty()
    redis_client.delete(keys.coordinator_lock)  # its coordinator stopped: no time left is promised for a run nobody feeds
    assert run_status(redis_client, config.run_id).eta_seconds is None


def test_a_resumed_run_is_paced_by_this_sessions_work_not_by_the_rows_it_found_written(redis_client, monkeypatch):
    """A resume that found 699 of 1,499 rows written: its feeder passes them again at reading speed, and they are in
    the written count from the start. Counted as work, they made the time left about 5 s where 3 min were left."""
    now = time.time()
    config = RunConfig(run_id="pace5", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=now - 4)
    save_run(redis_client, config)
    keys = RunKeys(config.run_id)
    redis_client.set(keys.coordinator_lock, "a coordinator")
    redis_client.hset(keys.stats, mapping={"rows_total": 1499, "rows_generated": 715, "rows_replayed": 699, "rows_written": 715,
                                           "rows_restored": 699, "session_started_at": now - 4})
    with monkeypatch.context() as frozen:  # the status is read at `now`, however slow the machine (3.99/s one run)
        frozen.setattr(time, "time", lambda: now)
        status = run_status(redis_client, config.run_id)
    assert status.recent is None and status.eta_seconds == pytest.approx(784 / 4, rel=0.02)  # 16 rows in 4 s; 784 left
    text = "\n".join(status.lines())
    assert "written 715 (4.00/s)" in text and "699 rows were written before this session" in text, text
    assert "left at the pace since its coordinator started" in text
    sample = take_sample(redis_client, config.run_id, now=now)
    assert sample.generated == 16  # the rows passed again are no generation


def test_a_run_resumed_on_a_shared_redis_is_paced_by_this_sessions_work_and_a_finished_one_by_its_whole_run(redis_client, monkeypatch):
    """A shared Redis keeps the counts of earlier sessions and passes nothing again: 480 rows generated before this
    coordinator started, 2 since, in 4 s."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)  # the status is read at `now`, however slow the machine
    config = RunConfig(run_id="pace6", data=DataSelection("rows.jsonl"), policy="p", reward_models=("length",), created_at=now - 3600)
    save_run(redis_client, config)
    keys = RunKeys(config.run_id)
    redis_client.set(keys.coordinator_lock, "a coordinator")
    redis_client.hset(keys.stats, mapping={"rows_total": 1000, "rows_generated": 482, "rows_scored": 481, "rows_written": 481,
                                           "rows_restored": 480, "session_generated_before": 480, "session_scored_before": 480,
                                           "completions_generated": 1928, "session_completions_before": 1920,
                                           "session_started_at": now - 4})
    status = run_status(redis_client, config.run_id)
    assert status.eta_seconds == pytest.approx(519 / 0.25, rel=0.02)  # writing is the slower stage: 1 row in 4 s, 519 left
    text = "\n".join(status.lines())
    assert "generated 482 (0.50/s), scored 481 (0.25/s), written 481 (0.25/s)" in text
    assert "completions 1928 (2.00/s)" in text  # the same session: 8 completions of 2 rows, not since the run was made
    redis_client.hset(keys.stats, mapping={"rows_generated": 1000, "rows_scored": 1000, "rows_written": 1000, "feed_done": 1,
                                           "finished_at": now - 3000, "session_started_at": now})  # a no-op resume of a done run
    done = "\n".join(run_status(redis_client, config.run_id).lines())
    assert "generated 1000 (1.67/s), scored 1000 (1.67/s), written 1000 (1.67/s)" in done  # over the run, not a session after its end
