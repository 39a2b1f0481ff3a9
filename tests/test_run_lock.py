"""One coordinator per run, provably: refusal while the first lives, take-over when it dies, a lock kept alive
through a long start-up, and a fence that stops a coordinator which lost its lock from writing anything more."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import CHAT_ROWS, rsample, write_jsonl
from faults import assert_exactly_once, start, wait_for

from rsample.producer.driver.coordinator import Coordinator
from rsample.producer.driver.run_lock import RunLock
from rsample.producer.registration import register_run
from rsample.workers.common.config import DataSelection, ModelSettings, RunConfig
from rsample.workers.common.errors import RsampleError
from rsample.workers.runtime.keys import RunKeys

ZERO_COST = ["--policy", "p", "--reward-model", "r", "--backend", "echo", "--reward-backend", "length", "--no-progress"]


def test_a_second_coordinator_refuses_while_the_first_lives_and_takes_over_when_it_dies(redis_server, redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    url = redis_server.url
    run_id = rsample("enqueue", "--redis-url", url, "--dataset", str(dataset), *ZERO_COST[:-1]).stdout.strip()
    out = tmp_path / "pairs.jsonl"
    first = start("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress", log=tmp_path / "first.log")
    wait_for(lambda: redis_client.exists(RunKeys(run_id).coordinator_lock), 60, "the first coordinator's lock")
    began = time.monotonic()
    second = rsample("aggregate", "--redis-url", url, "--run", run_id, "--out", str(tmp_path / "other.jsonl"), "--no-progress", check=False)
    assert second.returncode == 2 and f"run {run_id} already has a live coordinator" in second.stderr
    assert time.monotonic() - began < 20  # on the same host a live holder is seen at once: no wait for its lock to expire
    assert first.poll() is None

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    workers = [start("worker", role, "--redis-url", url, "--run", run_id, log=tmp_path / "workers.log") for role in ("generate", "reward")]
    try:
        taken = rsample("aggregate", "--redis-url", url, "--run", run_id, "--out", str(out), "--no-progress")
        assert "taking over run" in taken.stderr
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
    assert_exactly_once(out, None, CHAT_ROWS)


def test_a_holder_with_our_own_pid_is_waited_out_taken_over_once_its_lock_lapses_and_never_while_it_lives(redis_client):
    """Another PID namespace of this hostname (a container restarted, or two sharing the host's network) may hold our pid:
    the restarted one was refused at once as a live coordinator; taken over at once, a live one beside it was stopped."""
    import os
    import socket

    key = "rsample:test:same-pid"
    redis_client.set(key, f"{socket.gethostname()}:{os.getpid()}:{'0' * 32}", ex=2)  # the one before the restart
    began = time.monotonic()
    lock = RunLock(redis_client, key, "run1").acquire()
    assert redis_client.get(key) == lock.token.encode() and time.monotonic() - began < 10  # once its lock lapsed
    lock.release()

    live = RunLock(redis_client, key, "run1", seconds=3).acquire()  # our pid too, and alive: it refreshes its lock
    try:
        with pytest.raises(RsampleError, match="already has a live coordinator"):
            RunLock(redis_client, key, "run1", seconds=3).acquire()
        assert redis_client.get(key) == live.token.encode()
    finally:
        live.release()


def test_status_sees_a_killed_coordinator_gone_at_once_on_its_host(redis_server, redis_client, tmp_path):
    """Its lock outlives it by up to 30 s: `rsample status` said "(running)" all that while."""
    import socket
    import subprocess
    import sys

    from rsample.workers.runtime.status import run_status

    dataset = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(dataset), *ZERO_COST[:-1]).stdout.strip()
    lock = RunKeys(run_id).coordinator_lock
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for holder, coordinated in ((f"{socket.gethostname()}:{alive.pid}:{'a' * 32}", True),
                                    (f"{socket.gethostname()}:{dead.pid}:{'b' * 32}", False),
                                    (f"elsewhere:{dead.pid}:{'c' * 32}", True)):  # another host's: until its lock expires
            redis_client.set(lock, holder, ex=30)
            assert run_status(redis_client, run_id).coordinated is coordinated, holder
    finally:
        alive.kill()
        alive.wait()


def test_the_lock_lives_through_a_long_start_up(redis_client):
    lock = RunLock(redis_client, "rsample:test:lock", "run1", seconds=2).acquire()
    time.sleep(5)  # longer than the lock's life: only the keeper thread keeps it
    assert redis_client.get("rsample:test:lock") == lock.token.encode()
    lock.release()
    assert not redis_client.exists("rsample:test:lock")


def test_a_coordinator_that_lost_its_lock_writes_nothing_more(redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "chat.jsonl", [*CHAT_ROWS, "{not json"])
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",),
                       models=ModelSettings(generation_backend="echo", reward_backend="length"))
    config, _ = register_run(redis_client, config)
    coordinator = Coordinator(redis_client, config, tmp_path / "pairs.jsonl")
    coordinator.feeder.top_up()  # the bad row and the duplicate are settled by the feeder: ready to be committed
    redis_client.set(RunKeys(config.run_id).coordinator_lock, "elsewhere:1:intruder")  # another coordinator took over
    with pytest.raises(RsampleError, match=r"another coordinator \(elsewhere:1\) took over run"):
        coordinator.collector.step(block_ms=100)
    with pytest.raises(RsampleError, match="took over"):
        coordinator.step()
    assert coordinator.ledger.rows == set()
    assert (tmp_path / "pairs.outcomes.jsonl").read_text().count("\n") == 1  # the header alone
    coordinator.close()
    assert redis_client.get(RunKeys(config.run_id).coordinator_lock) == b"elsewhere:1:intruder"  # not released: not ours
