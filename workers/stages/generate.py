"""The generation job: n completions per prompt, merged into distinct candidates, handed to scoring."""

from __future__ import annotations

import logging
import time

from rsample.workers.backends.base import GenerationBackend, PromptCompletions
from rsample.workers.backends.batching import is_out_of_memory
from rsample.workers.common.config import RunConfig
from rsample.workers.common.errors import first_line
from rsample.workers.common.messages import Conversation, GeneratedBatch, PromptRecord
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.queues import enqueue_scoring
from rsample.workers.stages.dedup import merge_candidates

log = logging.getLogger(__name__)


def batch_seed(config: RunConfig, first_row: int) -> int:
    """Each batch its own seed, fixed by the run's seed and its first row: a retried batch samples the same way."""
    return config.sampling.seed * 1_000_003 + first_row


def generate_isolating_failures(backend: GenerationBackend, prompts: list[Conversation], config: RunConfig, seed: int) -> list[PromptCompletions]:
    """One prompt that breaks the backend (not out-of-memory: that is retried) is skipped with its error, alone."""
    try:
        return backend.generate(prompts, config.sampling, seed)
    except Exception as exc:
        if is_out_of_memory(exc) or len(prompts) == 1:
            raise
        log.warning("generation failed for a batch of %d (%s): retrying prompt by prompt", len(prompts), first_line(exc, with_type=True))
    results = []
    for offset, prompt in enumerate(prompts):
        try:
            results.extend(backend.generate([prompt], config.sampling, seed + offset))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            results.append(PromptCompletions([], f"generation failed: {first_line(exc, with_type=True)}"))
    return results


def generate_batch(run_id: str, batch_id: str, prompts: list[dict]) -> dict:
    """The generation job (RQ calls it by name with JSON arguments): the batch's candidates go to Redis, then to scoring."""
    context = worker_context.current(run_id)
    config, client, keys = context.config, context.client, RunKeys(run_id)
    records = [PromptRecord.from_dict(p) for p in prompts]
    started = time.perf_counter()
    results = generate_isolating_failures(context.generator, [r.messages for r in records], config, batch_seed(config, records[0].row_index))
    seconds = time.perf_counter() - started
    generated = [merge_candidates(r, res, config.include_reference) for r, res in zip(records, results)]
    completions = sum(len(res.completions) for res in results)
    tokens = sum(c.num_tokens for res in results for c in res.completions)
    needs_scoring = any(p.needs_scoring for p in generated)
    with client.pipeline() as pipe:
        pipe.set(keys.batch(batch_id), GeneratedBatch(batch_id, generated).to_json())
        pipe.hincrby(keys.stats, "rows_generated", len(records))
        pipe.hincrby(keys.stats, "completions_generated", completions)
        pipe.hincrby(keys.stats, "tokens_generated", tokens)
        pipe.hincrbyfloat(keys.stats, "generation_seconds", seconds)
        pipe.hincrby(keys.stats, "rows_scored", sum(not p.needs_scoring for p in generated))
        if not needs_scoring:
            pipe.xadd(keys.ready, {"batch_id": batch_id})
        pipe.execute()
    if needs_scoring:
        enqueue_scoring(client, config, batch_id)
    return {"prompts": len(records), "completions": completions, "tokens": tokens, "seconds": round(seconds, 3)}
