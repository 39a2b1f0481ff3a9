"""A broken device is not bad data: a sticky CUDA error, a dead engine, or a batch whose prompts nearly all fail
fails the job (to run elsewhere) and stops the worker, and skips no prompt; one prompt's own error skips it alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from breaking_backends import CUDA_FAULT, BreakingGenerator
from conftest import CHAT_ROWS, REPO, rsample, write_jsonl
from faults import wait_for

from rsample.producer.driver.ledger import Ledger
from rsample.producer.feeder import Feeder
from rsample.producer.registration import register_run
from rsample.workers.backends.faults import WorkerFault, is_device_fault
from rsample.workers.backends.zero_cost import EchoGenerator
from rsample.workers.common.config import DataSelection, JobSettings, ModelSettings, RunConfig, SamplingConfig
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.run_state import load_run
from rsample.workers.stages.generate import generate_batch

PROMPTS = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"question {i}"}], "reference_completion": None, "row_index": i}
           for i in range(4)]


class FailingPrompts(EchoGenerator):
    """Fails every call that includes one of the `bad` prompts (by their text)."""

    def __init__(self, bad: set[str]):
        self.bad = bad

    def generate(self, prompts, sampling, seed, progress=None):
        if any(p[-1]["content"] in self.bad for p in prompts):
            raise ValueError("this prompt's template is broken")
        return super().generate(prompts, sampling, seed)


@pytest.fixture
def context(redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", CHAT_ROWS)
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",), sampling=SamplingConfig(n=2),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)

    def install(generator):
        context = worker_context.WorkerContext(redis_client, config, generator)
        worker_context.install(context)
        return context

    yield config, install
    worker_context.install(None)


def test_the_fault_classes():
    assert is_device_fault(RuntimeError(CUDA_FAULT))
    assert is_device_fault(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_device_fault(RuntimeError("the vLLM engine stopped: EngineDeadError"))
    assert not is_device_fault(ValueError("Conversation roles must alternate"))


def test_a_sticky_cuda_error_fails_the_job_and_marks_the_worker_broken(context, redis_client):
    config, install = context
    keys = RunKeys(config.run_id)
    ctx = install(BreakingGenerator(works=1))
    generate_batch(config.run_id, "r0", PROMPTS)  # the device still works
    with pytest.raises(RuntimeError, match="illegal memory access"):
        generate_batch(config.run_id, "r4", PROMPTS)
    assert ctx.broken == f"RuntimeError: {CUDA_FAULT}"
    assert not redis_client.exists(keys.batch("r4"))  # nothing written, nothing skipped: the job will run elsewhere
    assert redis_client.xlen(keys.ready) == 0


def test_a_batch_whose_prompts_nearly_all_fail_is_a_worker_fault(context):
    config, install = context
    ctx = install(FailingPrompts({"question 0", "question 1", "question 2"}))
    with pytest.raises(WorkerFault, match="failed for 3 of 4 prompts alone"):
        generate_batch(config.run_id, "r0", PROMPTS)
    assert ctx.broken is not None


def test_one_bad_prompt_is_skipped_alone(context, redis_client):
    config, install = context
    ctx = install(FailingPrompts({"question 2"}))
    generate_batch(config.run_id, "r0", PROMPTS)
    assert ctx.broken is None
    batch = json.loads(redis_client.get(RunKeys(config.run_id).batch("r0")))
    reasons = [p["skip_reason"] for p in batch["prompts"]]
    assert reasons == [None, None, "generation failed: ValueError: this prompt's template is broken", None]


def test_a_worker_whose_device_breaks_stops_and_its_job_goes_back(redis_server, redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"question number {i}"} for i in range(6)])
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                     "--backend", "echo", "--reward-backend", "length", "--batch-size", "2").stdout.strip()
    Feeder(redis_client, load_run(redis_client, run_id), Ledger(tmp_path / "pairs.jsonl", None, run_id)).top_up()  # 3 jobs
    worker = subprocess.run([sys.executable, str(REPO / "tests" / "breaking_backends.py"), "worker", "generate", "--redis-url",
                             redis_server.url, "--run", run_id], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RSAMPLE_TEST_WORKS": "1"})
    assert worker.returncode == 2, worker.stdout + worker.stderr
    assert "error: worker stopped after a fault of its device or engine: RuntimeError: CUDA error" in worker.stderr
    keys = RunKeys(run_id)
    queue = make_queue(redis_client, keys.generate_queue)
    wait_for(lambda: queue.count + len(queue.scheduled_job_registry.get_job_ids()) == 2, 10, "the failed job back for a retry")
    assert len(queue.failed_job_registry.get_job_ids()) == 0  # not given up: no prompt was skipped for the device
    assert redis_client.xlen(keys.ready) == 0 or all(b"failed" not in f for _, f in redis_client.xrange(keys.ready))


@pytest.mark.parametrize("then", ["echo", "fault"])
def test_a_job_redis_lost_while_it_ran_is_neither_written_nor_run_again(redis_server, redis_client, tmp_path, then):
    """Redis restarted empty while a batch was generated, and the coordinator made the run again (it feeds the rows
    anew, under other batch ids). The job that ran through the loss wrote its batch and counts into the new Redis and
    handed it to scoring; then RQ's bookkeeping raised InvalidJobOperation (a traceback), failed the job and retried
    it: the batch was generated twice more. Its failure was retried too."""
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"question number {i}"} for i in range(4)])
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                     "--backend", "echo", "--reward-backend", "length", "--batch-size", "2").stdout.strip()
    Feeder(redis_client, load_run(redis_client, run_id), Ledger(tmp_path / "pairs.jsonl", None, run_id)).top_up()  # 2 jobs
    worker = subprocess.run([sys.executable, str(REPO / "tests" / "breaking_backends.py"), "worker", "generate", "--run", run_id,
                             "--burst"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RSAMPLE_REDIS_URL": redis_server.url, "RSAMPLE_TEST_BACKEND": "ForgettingGenerator",
                                 "RSAMPLE_TEST_THEN": then})
    said = worker.stdout + worker.stderr
    assert worker.returncode == (2 if then == "fault" else 0), said
    assert "Redis no longer holds it (restarted without persistence, its run forgotten" in said
    assert ("Traceback" in said) is (then == "fault"), said  # the fault's own, as any job's failure; none of RQ's
    assert load_run(redis_client, run_id).run_id == run_id  # the run made again, and nothing else:
    left = {k.decode() for k in redis_client.keys("*") if not k.startswith(b"rq:worker")}  # RQ's own account of the worker
    assert left == {RunKeys(run_id).config, "rsample:runs"}, left  # no batch, count, job, queue, registry or scoring job


def test_workers_count_again_after_redis_restarts_empty(redis_server, redis_client, tmp_path):
    """Redis restarted without persistence forgets RQ's worker sets: `rsample status` would show no workers while they
    work. The workers register again at their next heartbeat, which follows their reconnection."""
    from faults import start

    from rsample.workers.runtime.queues import worker_processes

    dataset = write_jsonl(tmp_path / "rows.jsonl", CHAT_ROWS)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                     "--backend", "echo", "--reward-backend", "length").stdout.strip()
    queue = make_queue(redis_client, RunKeys(run_id).generate_queue)
    worker = start("worker", "both", "--redis-url", redis_server.url, "--run", run_id, log=tmp_path / "worker.log")
    wait_for(lambda: worker_processes(queue) == 1, 60, "the worker to register", interval=0.1)
    redis_server.stop()
    redis_server.start()  # empty: no AOF, no snapshot
    assert worker_processes(queue) == 0
    wait_for(lambda: worker_processes(queue) == 1, 30, "the worker to register again", interval=0.1)
    key = f"rq:worker:{redis_client.smembers(f'rq:workers:{queue.name}').pop().decode().split(':', 2)[-1]}"
    assert redis_client.hget(key, "queues").decode().split(",") == [RunKeys(run_id).score_queue(0), queue.name]
    assert 0 < redis_client.ttl(key)  # it still expires if the worker dies unseen
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    assert worker_processes(queue) == 0  # and its death is registered as before


def with_an_abandoned_job(redis_client, tmp_path, jobs: JobSettings | None = None):
    """A coordinator of a small echo run, and its first generation job as a worker that then died left it: started,
    its claim in the started registry expired."""
    from rq.executions import Execution
    from rq.job import JobStatus

    from rsample.producer.driver.coordinator import Coordinator

    config = RunConfig(run_id="", data=DataSelection(str(write_jsonl(tmp_path / "rows.jsonl", CHAT_ROWS[:2]))), policy="p",
                       reward_models=("r",), models=ModelSettings(generation_backend="echo", reward_backend="length"),
                       jobs=jobs or JobSettings())
    config, _ = register_run(redis_client, config)
    coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
    coordinator.feeder.top_up()
    queue = make_queue(redis_client, RunKeys(config.run_id).generate_queue)
    [job] = queue.jobs
    queue.remove(job)
    with redis_client.pipeline() as pipe:
        execution = Execution.create(job, ttl=60, pipeline=pipe)
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        job.started_job_registry.add_execution(execution, pipeline=pipe, ttl=0)
        pipe.execute()
    return coordinator, queue, job


def test_worker_maintenance_leaves_abandoned_jobs_to_the_coordinators_sweep(redis_client, tmp_path):
    """RQ's workers requeue abandoned jobs in their own maintenance (first as they start), each from its own read of the
    job's retries: beside the coordinator's sweep, a job could be requeued twice and run twice. Only the sweep does it."""
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    from rsample.workers.runtime.safe_job import SafeJob
    from rsample.workers.runtime.worker import HeartbeatWorker

    coordinator, queue, job = with_an_abandoned_job(redis_client, tmp_path)
    try:
        registry = StartedJobRegistry(queue=queue, job_class=SafeJob)
        worker = HeartbeatWorker([queue.name], connection=redis_client, serializer=JSONSerializer, job_class=SafeJob)
        worker.clean_registries()  # as a worker starting up does
        entries = lambda: [entry.decode().split(":")[0] for entry in redis_client.zrange(registry.key, 0, -1)]  # noqa: E731
        assert entries() == [job.id] and queue.count == 0  # left alone
        coordinator.sweep()
        assert queue.job_ids == [job.id] and entries() == []
        job.refresh()
        assert job.retries_left == coordinator.config.jobs.retries - 1  # requeued once, one retry used
    finally:
        coordinator.close()


def test_a_sweep_whose_clock_reading_waited_out_an_outage_requeues_nothing_yet(redis_client, tmp_path, monkeypatch):
    """The sweep's cutoff comes from Redis's clock, its first command: one that waited out an outage read the time after
    it, and every live job whose heartbeats could not reach Redis meanwhile would be requeued. It waits, as after a step
    that waited out an outage, for the workers to beat again."""
    import time

    import rsample.producer.driver.coordinator as coordinator_module

    coordinator, queue, job = with_an_abandoned_job(redis_client, tmp_path, JobSettings(heartbeat_ttl=4))
    try:
        clock = coordinator_module.redis_now
        monkeypatch.setattr(coordinator_module, "redis_now", lambda client: (time.sleep(3.5), clock(client))[1])
        assert coordinator.sweep() is False and queue.count == 0  # left to its worker, to beat again
        monkeypatch.setattr(coordinator_module, "redis_now", clock)
        assert coordinator.sweep() is False  # nor at once after
        wait_for(coordinator.sweep, 10, "the postponed sweep", interval=0.5)
        assert queue.job_ids == [job.id]  # no worker beat again: requeued
    finally:
        coordinator.close()


def test_a_worker_whose_clock_is_behind_keeps_its_jobs(redis_server, redis_client, tmp_path):
    """RQ scores a running job's claim by the worker's clock, and the coordinator's sweep judged it by its own: a worker
    whose clock ran a heartbeat TTL behind had every job requeued as abandoned while it ran them, each losing a retry
    (with two workers of a role, run twice). Both sides now read Redis's clock."""
    from faults import assert_exactly_once

    rows = [{"prompt": f"question number {i}"} for i in range(6)]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                     "--backend", "echo", "--reward-backend", "length", "--batch-size", "2", "--n", "2").stdout.strip()
    log = tmp_path / "worker.log"
    with log.open("w") as handle:
        worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "skewed_clock.py"), "worker", "both", "--redis-url",
                                   redis_server.url, "--run", run_id], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "RSAMPLE_TEST_SKEW": "-90", "RSAMPLE_TEST_SLOW": "2"})
    try:
        out = tmp_path / "pairs.jsonl"
        done = rsample("aggregate", "--redis-url", redis_server.url, "--run", run_id, "--out", str(out), "--no-progress", timeout=120)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert "enqueued for retry" not in done.stderr and "abandoned" not in done.stderr, done.stderr  # RQ's sweep says so
    assert assert_exactly_once(out, None, rows) == {"pair": 6}


def test_a_worker_restarted_in_its_container_is_not_taken_for_the_one_that_died_there(redis_server, redis_client, tmp_path):
    """A container restarted after its worker died uncleanly (OOM killer, `docker kill`) has the same hostname and PID:
    the worker took the dead one's name, whose key RQ keeps up to two minutes, and RQ refused it ("There exists an
    active worker named ..."), restart after restart, each reloading the models."""
    import socket

    from rq import Worker

    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"question number {i}"} for i in range(2)])
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                     "--backend", "echo", "--reward-backend", "length").stdout.strip()
    queue = make_queue(redis_client, RunKeys(run_id).generate_queue)
    Worker([queue], connection=redis_client, name=f"rsample-generate-{socket.gethostname()}-4242").register_birth()  # died there
    as_pid_4242 = "import os, sys; os.getpid = lambda: 4242; from rsample.producer.cli import main; main(sys.argv[1:])"
    worker = subprocess.run([sys.executable, "-c", as_pid_4242, "worker", "generate", "--redis-url", redis_server.url, "--run", run_id,
                             "--burst"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert "There exists an active worker" not in worker.stderr


def test_a_worker_without_run_waits_for_a_run_not_yet_finished(redis_server, redis_client, tmp_path):
    """With only finished runs in Redis, `rsample worker` loaded the newest one's models to serve nothing, and then
    exited (to be started again) once a run of other models came."""
    from faults import start

    first = write_jsonl(tmp_path / "first.jsonl", CHAT_ROWS)
    echo = ["--policy", "p", "--reward-model", "r", "--backend", "echo", "--reward-backend", "length"]
    rsample("run", "--redis-url", redis_server.url, "--dataset", str(first), *echo, "--out", str(tmp_path / "pairs.jsonl"), "--no-progress")
    log = tmp_path / "worker.log"
    worker = start("worker", "both", "--redis-url", redis_server.url, log=log)
    try:
        wait_for(lambda: "waiting for a run: this Redis holds none not yet finished" in log.read_text(), 60, "the worker to wait",
                 interval=0.1)
        assert "loaded" not in log.read_text()
        second = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(write_jsonl(tmp_path / "second.jsonl", CHAT_ROWS[:3])),
                         *echo).stdout.strip()
        wait_for(lambda: f"serving run {second}" in log.read_text(), 60, "the worker to serve the new run", interval=0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_stop_timeout_spares_a_worker_that_stops_in_time(redis_server, redis_client, tmp_path):
    """`--stop-timeout` is the second stop signal for a job still running then: once the jobs were done, it still
    fired, and cut the models' shutdown short (a vLLM engine's takes seconds), exiting 143 instead of 0."""
    import signal

    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "question"}])
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), "--policy", "p", "--reward-model", "r",
                     "--backend", "echo", "--reward-backend", "length").stdout.strip()
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "breaking_backends.py"), "worker", "generate", "--redis-url",
                               redis_server.url, "--run", run_id, "--stop-timeout", "1"], cwd=REPO, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, env={**os.environ, "RSAMPLE_TEST_BACKEND": "SlowClosingGenerator"})
    try:
        wait_for(lambda: f"serving run {run_id}" in log.read_text(), 60, "the worker to serve", interval=0.1)
        from rq import Worker  # idle in Redis: RQ's signal handlers are in place (before them, SIGTERM is the CLI's: 143)

        wait_for(lambda: any(w.get_state() == "idle" for w in Worker.all(connection=redis_client)), 60, "the worker to idle", interval=0.1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        worker.kill()
    assert "closed" in log.read_text() and "exiting now" not in log.read_text()
