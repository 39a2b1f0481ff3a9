"""Fixtures: a real Redis server per test on a free port, tiny offline models, small chat datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # no Hub here: a missing model must fail at once, not after retries
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import redis  # noqa: E402

from rsample.workers.runtime.embedded_redis import EmbeddedRedis  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True)
def reap_processes():
    """Workers wait for their Redis forever by design: a failed test must not leave them behind."""
    yield
    from faults import STARTED

    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def redis_server(tmp_path):
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    yield server
    server.close()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A policy, two reward models with their own vocabularies and templates, and a reward model with a short context."""
    from rsample.workers.backends.tiny_models import build_policy, build_reward_model

    root = tmp_path_factory.mktemp("models")
    return {
        "policy": str(build_policy(root / "policy")),
        "reward": str(build_reward_model(root / "reward", seed=1)),
        "reward2": str(build_reward_model(root / "reward2", seed=2)),
    }


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "write a poem about the river"}, {"role": "assistant", "content": "the river runs"}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "explain why the sky is blue"}]},
    {"messages": [{"role": "user", "content": "name a city"}, {"role": "assistant", "content": "a city"}, {"role": "user", "content": "another one"}, {"role": "assistant", "content": "river city"}]},
    {"prompt": "list three numbers"},
    {"prompt": "list three numbers"},
    {"prompt": "tell a story about music"},
    {"prompt": "what is a good test"},
    {"prompt": "write code in python"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def chat_dataset(tmp_path):
    return write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)


def rsample(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs the real CLI in a child process, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "rsample.producer", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if check and result.returncode != 0:
        raise AssertionError(f"rsample {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
