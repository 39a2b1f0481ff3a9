"""What a stranger who can write to the Redis can do to a worker: nothing but fail their own jobs."""

import json
import os
import pickle
import subprocess
import sys
import zlib
from datetime import datetime, timezone

from conftest import REPO, write_jsonl
from rq.serializers import JSONSerializer

from rsample.producer.registration import register_run
from rsample.workers.common.config import DataSelection, RunConfig
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import make_queue
from rsample.workers.runtime.safe_job import SafeJob


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(client, queue_name, job_id, data: bytes) -> None:
    """Writes a job the way RQ stores one, bypassing every rsample code path."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.hset(f"rq:job:{job_id}", mapping={"data": zlib.compress(data), "origin": queue_name, "status": "queued",
                                             "created_at": now, "enqueued_at": now, "description": "planted", "timeout": 60})
    client.rpush(f"rq:queue:{queue_name}", job_id)
    client.sadd("rq:queues", f"rq:queue:{queue_name}")


def run_burst_worker(url, run_id):
    return subprocess.run([sys.executable, "-m", "rsample.producer", "worker", "generate", "--redis-url", url, "--run", run_id, "--burst"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_planted_pickle_and_foreign_functions_are_refused(redis_server, redis_client, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "hello"}])
    config = RunConfig(run_id="", data=DataSelection(str(dataset)), policy="p", reward_models=("r",))
    config = register_run(redis_client, RunConfig(**{**config.__dict__, "models": type(config.models)(generation_backend="echo", reward_backend="length")}))[0]
    queue_name = RunKeys(config.run_id).generate_queue
    pickled_marker, json_marker = tmp_path / "pickle-ran", tmp_path / "json-ran"
    plant(redis_client, queue_name, "planted-pickle", pickle.dumps(["x", None, [Exploit(pickled_marker)], {}]))
    plant(redis_client, queue_name, "planted-json", json.dumps(["os.system", None, [f"touch {json_marker}"], {}]).encode())
    make_queue(redis_client, queue_name).enqueue_call(  # a legitimate job after them: the worker must live to run it
        "rsample.workers.stages.generate.generate_batch", args=[config.run_id, "r0", [{"prompt_id": "p", "messages": [{"role": "user", "content": "hello"}], "reference_completion": None, "row_index": 0}]],
        job_id="legit", result_ttl=60,
    )
    result = run_burst_worker(redis_server.url, config.run_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not pickled_marker.exists() and not json_marker.exists()
    failed = make_queue(redis_client, queue_name).failed_job_registry.get_job_ids()
    assert set(failed) == {"planted-json", "planted-pickle"}
    refused = SafeJob.fetch("planted-json", connection=redis_client, serializer=JSONSerializer)
    assert "'os.system' is not an rsample job function" in refused.latest_result().exc_string
    assert redis_client.hget("rq:job:planted-pickle", "status") == b"failed"
    assert "DeserializationError" in result.stderr + result.stdout
    assert redis_client.exists(RunKeys(config.run_id).batch("r0"))  # the legitimate job ran
