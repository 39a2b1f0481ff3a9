"""Creating a run: store its settings, read its prompts, enqueue them as generation jobs."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, replace

import redis

from producer.dataset import iter_rows
from producer.prompts import RowSkip, extract_prompt
from workers.config import RunConfig
from workers.errors import RsampleError
from workers.keys import RunKeys
from workers.messages import PromptRecord
from workers.queues import generation_job_data, make_queue
from workers.runs import save_run

log = logging.getLogger(__name__)

ENQUEUE_CHUNK = 64
"""Generation jobs sent to Redis per pipeline round trip."""


def run_id_for(config: RunConfig) -> str:
    """Same settings, same id: re-running a command finds its run again instead of starting a twin."""
    settings = asdict(config)
    for volatile in ("run_id", "command", "created_at"):
        settings.pop(volatile)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def create_run(client: redis.Redis, config: RunConfig) -> RunConfig:
    """Stores the run and enqueues every prompt; returns the config with its id and creation time."""
    config = replace(config, run_id=config.run_id or run_id_for(config), created_at=time.time())
    keys = RunKeys(config.run_id)
    if client.exists(keys.config):
        raise RsampleError(
            f"run {config.run_id} already exists in this Redis: attach workers with `--run {config.run_id}`, "
            "or pass --run-id to start a separate run with the same settings"
        )
    save_run(client, config)
    queue = make_queue(client, keys.generate_queue)
    seen: set[str] = set()
    batch: list[PromptRecord] = []
    pending_jobs = []
    batch_id = 0
    rows_read = duplicates = 0
    skips: dict[str, int] = {}

    def flush_jobs() -> None:
        if pending_jobs:
            with client.pipeline() as pipe:
                queue.enqueue_many(pending_jobs, pipeline=pipe)
                pipe.hincrby(keys.stats, "prompts_enqueued", sum(len(job.args[2]) for job in pending_jobs))
                pipe.execute()
            pending_jobs.clear()

    for row_index, row in iter_rows(config.data):
        rows_read += 1
        record = row if isinstance(row, RowSkip) else extract_prompt(row, row_index, config.data.system_prompt)
        if isinstance(record, RowSkip):
            log.warning("skipping %s (%s)", record.detail, record.reason)
            skips[record.reason] = skips.get(record.reason, 0) + 1
            continue
        if record.prompt_id in seen:
            duplicates += 1
            continue
        seen.add(record.prompt_id)
        batch.append(record)
        if len(batch) == config.prompts_per_job:
            pending_jobs.append(generation_job_data(config.run_id, batch_id, batch))
            batch, batch_id = [], batch_id + 1
            if len(pending_jobs) >= ENQUEUE_CHUNK:
                flush_jobs()
    if batch:
        pending_jobs.append(generation_job_data(config.run_id, batch_id, batch))
        batch_id += 1
    flush_jobs()

    with client.pipeline() as pipe:
        pipe.hset(keys.stats, mapping={"rows_read": rows_read, "duplicate_prompts": duplicates, "num_batches": batch_id})
        if skips:
            pipe.hset(keys.skips, mapping=skips)
        pipe.execute()
    if not seen:
        summary = ", ".join(f"{n} {reason}" for reason, n in skips.items()) or "the selected slice is empty"
        raise RsampleError(f"no usable prompt in {config.data.dataset} ({rows_read} rows read: {summary})")
    log.info("run %s: %d prompts in %d jobs (%d duplicates, %d rows skipped)", config.run_id, len(seen), batch_id, duplicates, sum(skips.values()))
    return config
