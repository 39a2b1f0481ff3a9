"""The generation job: n completions per prompt, merged into distinct candidates, handed to scoring."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from rq import get_current_job

from rsample.workers.backends.base import GenerationBackend, ProgressCallback, PromptCompletions
from rsample.workers.backends.templates import opened_thinking
from rsample.workers.common.config import RunConfig
from rsample.workers.common.messages import Conversation, GeneratedBatch, PromptRecord, failure_reason
from rsample.workers.common.reasoning import opening_marker
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.live_progress import LiveReporter
from rsample.workers.runtime.queues import enqueue_scoring
from rsample.workers.stages.dedup import merge_candidates
from rsample.workers.stages.isolation import run_isolating_failures

log = logging.getLogger(__name__)


HAND_OFF = """
if KEYS[5] and redis.call('hexists', KEYS[5], 'status') == 0 then
  return 3
end
if redis.call('hexists', KEYS[3], 'finished_at') == 1 then
  return 2
end
if not redis.call('set', KEYS[1], ARGV[1], 'NX') then
  if redis.call('get', KEYS[1]) == ARGV[1] then
    return 4
  end
  return 0
end
redis.call('hdel', KEYS[2], ARGV[2])
redis.call('hincrby', KEYS[3], 'rows_generated', ARGV[3])
redis.call('hincrby', KEYS[3], 'completions_generated', ARGV[4])
redis.call('hincrby', KEYS[3], 'tokens_generated', ARGV[5])
redis.call('hincrbyfloat', KEYS[3], 'generation_seconds', ARGV[6])
redis.call('hincrby', KEYS[3], 'rows_scored', ARGV[7])
if ARGV[8] == '1' then
  redis.call('xadd', KEYS[4], '*', 'batch_id', ARGV[2])
end
return 1
"""
"""A batch's result and its counts in one step (readers see the live entry or the final counts, never both): a worker
killed between them left a result whose requeued job, finding it, counted nothing, and the run's figures short. Nothing
for a finished run (2): its every row is written, and a payload written then would never be read nor expire. Nothing
for a job that Redis lost while it ran (3, `lost_by_redis`; KEYS[5], the job's hash, where a job runs this). This very
result found written (4): the script ran before, and its answer was lost to a timeout that the client then retried."""


def batch_seed(config: RunConfig, first_row: int) -> int:
    """Each batch its own seed, fixed by the run's seed and its first row: a retried batch samples the same way. Within
    the 64 bits torch takes (`--seed` is any int: a nanosecond timestamp made every job fail); the same seed as before
    for every non-negative --seed that fitted."""
    return (config.sampling.seed * 1_000_003 + first_row) % 2**64


def generate_isolating_failures(backend: GenerationBackend, prompts: list[Conversation], config: RunConfig, seed: int,
                                progress: ProgressCallback | None = None) -> list[PromptCompletions]:
    """One prompt that breaks the backend is skipped with its error, alone; a broken worker fails the job instead."""
    return run_isolating_failures(
        prompts,
        run_all=lambda batch: backend.generate(list(batch), config.sampling, seed, progress),
        run_one=lambda prompt: backend.generate([prompt], config.sampling, seed)[0],
        skipped=lambda prompt, error: PromptCompletions([], failure_reason("generation", error)),
        what="generation",
    )


def with_opened_thinking(backend: GenerationBackend, prompts: list[Conversation], results: list[PromptCompletions],
                         config: RunConfig) -> list[PromptCompletions]:
    """Each sample as the policy wrote it: the thinking its template opened (`opened_thinking`), then the completion: a
    reasoning trace without its opening marker is no whole trace for SFT. A completion that opens the thinking again
    is left as it is."""
    tokenizer = getattr(backend, "tokenizer", None)  # the model backends' own; the zero-cost one has none
    marker = opening_marker(config.reasoning_end)
    if tokenizer is None or marker is None:
        return results
    out = []
    for prompt, result in zip(prompts, results):
        opened = opened_thinking(tokenizer, prompt, config.sampling.chat_template_kwargs, config.reasoning_end) if result.completions else ""
        if opened:
            result = dataclasses.replace(result, completions=[
                c if c.reasoning is not None or c.text.startswith(marker) else dataclasses.replace(c, text=opened + c.text)
                for c in result.completions])
        out.append(result)
    return out


def generate_batch(run_id: str, batch_id: str, prompts: list[dict]) -> dict:
    """The generation job (RQ calls it by name with JSON arguments): the batch's candidates go to Redis, then to scoring."""
    context = worker_context.current(run_id)
    config, client, keys = context.config, context.client, RunKeys(run_id)
    records = [PromptRecord.from_dict(p) for p in prompts]
    if client.hexists(keys.stats, "finished_at"):  # a job left in RQ's lists by a killed worker, put back after the run ended
        log.info("batch %s of run %s: the run is finished, nothing to generate", batch_id, run_id)
        return {"prompts": len(records), "completions": 0, "tokens": 0, "seconds": 0.0, "finished": True}
    started = time.perf_counter()
    live = LiveReporter(client, run_id, batch_id, "generate", len(records))
    with context.broken_by_device_faults():
        results = generate_isolating_failures(context.generator, [r.messages for r in records], config,
                                              batch_seed(config, records[0].row_index), live)
    seconds = time.perf_counter() - started
    results = with_opened_thinking(context.generator, [r.messages for r in records], results, config)
    generated = [merge_candidates(r, res, config.include_reference, config.reasoning_end) for r, res in zip(records, results)]
    completions = sum(len(res.completions) for res in results)
    tokens = sum(c.num_tokens for res in results for c in res.completions)
    needs_scoring = any(p.needs_scoring(config.min_candidates_scored) for p in generated)
    job = get_current_job()
    handed_off = client.register_script(HAND_OFF)(
        keys=[keys.batch(batch_id), keys.live, keys.stats, keys.ready, *([job.key] if job is not None else [])],
        args=[GeneratedBatch(batch_id, generated).to_json(), batch_id, len(records), completions, tokens, seconds,
              sum(not p.needs_scoring(config.min_candidates_scored) for p in generated), int(not needs_scoring)])
    if handed_off == 3:  # lost_by_redis
        log.info("batch %s of run %s: Redis lost its job while it was generated; nothing written", batch_id, run_id)
        client.hdel(keys.live, batch_id)
        return {"prompts": len(records), "completions": 0, "tokens": 0, "seconds": round(seconds, 3), "lost": True}
    if handed_off == 2:
        log.info("batch %s of run %s: the run finished while it was generated; nothing written", batch_id, run_id)
        client.hdel(keys.live, batch_id)
        return {"prompts": len(records), "completions": 0, "tokens": 0, "seconds": round(seconds, 3), "finished": True}
    if handed_off == 4:  # or a run of the job again that sampled the same texts (a fixed seed on a deterministic backend)
        log.info("batch %s of run %s: its result was written by a try whose answer Redis's timeout lost", batch_id, run_id)
        client.hdel(keys.live, batch_id)
    elif not handed_off:
        # This job ran before (its worker lost Redis past the heartbeat TTL, and the job was requeued). Sampling is
        # not bit-reproducible, so this run's texts differ: the first payload wins, and scores given to it stay right.
        log.warning("batch %s of run %s was generated before: keeping the first result", batch_id, run_id)
        first = client.get(keys.batch(batch_id))
        if first is not None:  # hand the first result on again, in case its run died right after writing it (idempotent)
            if any(p.needs_scoring(config.min_candidates_scored) for p in GeneratedBatch.from_dict(json.loads(first)).prompts):
                enqueue_scoring(client, config, batch_id)
            else:
                client.xadd(keys.ready, {"batch_id": batch_id})
        client.hdel(keys.live, batch_id)
        return {"prompts": len(records), "completions": 0, "tokens": 0, "seconds": round(seconds, 3), "repeat": True}
    if needs_scoring:
        enqueue_scoring(client, config, batch_id)
    return {"prompts": len(records), "completions": completions, "tokens": tokens, "seconds": round(seconds, 3)}
