"""Registering a run: its settings stored under an id derived from them."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import redis

from rsample.producer.dataset import count_rows
from rsample.workers.common.config import RunConfig
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.run_state import load_run, save_run


def run_id_for(config: RunConfig) -> str:
    """Same output settings, same id: re-running a command finds its run (and its output files) again."""
    return hashlib.sha256(json.dumps(config.output_settings(), sort_keys=True).encode()).hexdigest()[:12]


def dataset_files(config: RunConfig) -> tuple[Path, ...]:
    """The local files the run reads, which no output may overwrite (a Hub dataset has none)."""
    path = Path(config.data.dataset).expanduser()
    if path.is_dir():
        return tuple(p for p in path.rglob("*") if p.is_file())
    return (path,) if path.exists() else ()


def register_run(client: redis.Redis, config: RunConfig) -> tuple[RunConfig, bool]:
    """Stores the run unless this Redis has it already; returns (config, True if it existed)."""
    config = replace(config, run_id=config.run_id or run_id_for(config))
    if client.exists(RunKeys(config.run_id).config):
        return load_run(client, config.run_id), True
    rows = count_rows(config.data)  # also proves that the dataset loads and has a prompt column
    config = replace(config, created_at=time.time())
    save_run(client, config)
    client.hset(RunKeys(config.run_id).stats, "rows_total", rows)
    return config, False
