"""`rsample dashboard` serves rq-dashboard in-process with the JSON serializer, so job views work on our JSON jobs,
and stopping it leaves nothing behind."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, rsample

from rsample.producer.driver.ledger import Ledger
from rsample.producer.feeder import Feeder
from rsample.workers.runtime.connection import REDIS_URL_ENV
from rsample.workers.runtime.embedded_redis import EmbeddedRedis, free_port
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import generation_job_id, make_queue
from rsample.workers.runtime.run_state import load_run
from rsample.workers.runtime.safe_job import SafeJob


def fetch(url, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_dashboard_shows_queues_and_job_details(redis_server, redis_client, chat_dataset, tmp_path):
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset), "--policy", "p",
                     "--reward-model", "r", "--backend", "echo", "--reward-backend", "length").stdout.strip()
    config = load_run(redis_client, run_id)
    Feeder(redis_client, config, Ledger(tmp_path / "pairs.jsonl", None, run_id)).top_up()  # what `rsample aggregate` does first
    port = free_port()
    dashboard = subprocess.Popen([sys.executable, "-m", "rsample.producer", "dashboard", "--redis-url", redis_server.url, "--port", str(port)],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = fetch(f"{base}/0/data/queues.json")
        queues = {q["name"]: q["count"] for q in json.loads(body)["queues"]}
        assert queues[RunKeys(run_id).generate_queue] == 1  # 7 distinct prompts, one job of 16
        status, body = fetch(f"{base}/0/data/job/{generation_job_id(run_id, 'r0')}.json")
        job = json.loads(body)
        assert status == 200
        assert "generate batch r0 (7 prompts)" in job["description"]
        assert job["status"] == "queued"
        status, page = fetch(f"{base}/0/view/job/{generation_job_id(run_id, 'r0')}")
        assert status == 200 and "UnpicklingError" not in page
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def fed_run(redis_server, redis_client, chat_dataset, tmp_path):
    run_id = rsample("enqueue", "--redis-url", redis_server.url, "--dataset", str(chat_dataset), "--policy", "p",
                     "--reward-model", "r", "--backend", "echo", "--reward-backend", "length").stdout.strip()
    Feeder(redis_client, load_run(redis_client, run_id), Ledger(tmp_path / "pairs.jsonl", None, run_id)).top_up()
    return run_id, make_queue(redis_client, RunKeys(run_id).generate_queue)


def busy_worker(redis_client, queue):
    """A worker that took the queue's job and is running it, as `rsample worker` does."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    worker = SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer, job_class=SafeJob, name="busy-worker")
    worker.register_birth()
    job, _ = queue.dequeue_any([queue], None, connection=redis_client, job_class=SafeJob, serializer=JSONSerializer)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    return job


def test_the_workers_page_shows_a_worker_running_a_job(redis_server, redis_client, chat_dataset, tmp_path):
    """rq-dashboard lists workers without its serializer setting: it unpickled the running job and answered 500."""
    from rsample.workers.runtime.dashboard import make_app

    _, queue = fed_run(redis_server, redis_client, chat_dataset, tmp_path)
    busy_worker(redis_client, queue)
    response = make_app(redis_server.url).test_client().get("/0/data/workers.json")
    assert response.status_code == 200, response.data[:300]
    [worker] = response.get_json()["workers"]
    assert worker["name"] == "busy-worker" and "generate batch r0" in json.dumps(worker["current_job"])


def test_rsample_status_only_reads_it_never_requeues_a_job(redis_server, redis_client, chat_dataset, tmp_path):
    """RQ's registry `.count` also sweeps it: `rsample status` right after a Redis outage requeued a live worker's job
    (and spent one of its retries) that the coordinator's sweep was giving one heartbeat TTL to beat again."""
    from rq.serializers import JSONSerializer

    from rsample.workers.runtime.status import run_status

    run_id, queue = fed_run(redis_server, redis_client, chat_dataset, tmp_path)
    job = busy_worker(redis_client, queue)
    registry = queue.started_job_registry
    [entry] = redis_client.zrange(registry.key, 0, -1)
    redis_client.zadd(registry.key, {entry: time.time() - 1})  # its heartbeat is out of date: Redis has just come back
    retries = SafeJob.fetch(job.id, connection=redis_client, serializer=JSONSerializer).retries_left
    report = run_status(redis_client, run_id)
    after = SafeJob.fetch(job.id, connection=redis_client, serializer=JSONSerializer)
    assert (after.get_status(), after.retries_left) == ("started", retries)
    assert [(q.queued, q.started) for q in report.queues if q.name == queue.name] == [(0, 1)]


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes (other than this test's) that contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_dashboard_leaves_nothing_running_and_never_shows_the_password(tmp_path, stop):
    password = "dash-Secret-9c1"
    with EmbeddedRedis(data_dir=tmp_path / "redis", password=password) as server:
        port = free_port()
        dashboard = subprocess.Popen([sys.executable, "-m", "rsample.producer", "dashboard", "--port", str(port)], cwd=REPO,
                                     env={**os.environ, REDIS_URL_ENV: server.url}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            status, body = fetch(f"http://127.0.0.1:{port}/0/data/queues.json")
            assert status == 200 and json.loads(body)["queues"] == []  # it reached the password-protected Redis
            assert _processes_naming(password) == []
            assert [line for line in _processes_naming(str(port)) if "rq_dashboard" in line] == []  # in-process: no child to outlive it
            dashboard.send_signal(stop)
            code = dashboard.wait(timeout=30)
            assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        finally:
            if dashboard.poll() is None:
                dashboard.kill()
                dashboard.wait()
        output = dashboard.stdout.read().decode()
        assert password not in output and "***" in output
        with pytest.raises(OSError):  # the port is closed: nothing serves it any more
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_port_in_use_is_refused_before_the_dashboard_is_announced(redis_server):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = rsample("dashboard", "--redis-url", redis_server.url, "--port", str(port), check=False, timeout=60)
    assert result.returncode == 2 and "rq-dashboard on" not in result.stdout
    assert result.stderr.strip() == f"error: cannot serve the dashboard on 127.0.0.1:{port}: Address already in use (--port picks another)"
