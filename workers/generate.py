"""The generation job: n completions per prompt, merged into distinct candidates, handed to scoring."""

from __future__ import annotations

import json
import time

from workers import runtime
from workers.config import RunConfig
from workers.generation_backends import PromptCompletions
from workers.keys import RunKeys
from workers.messages import Candidate, GeneratedBatch, GeneratedPrompt, PromptRecord
from workers.queues import enqueue_scoring


def batch_seed(config: RunConfig, batch_id: int) -> int:
    """Each batch its own seed, fixed by the run's seed: a retried batch samples the same way."""
    return config.sampling.seed * 1_000_003 + batch_id


def merge_candidates(record: PromptRecord, result: PromptCompletions, include_reference: bool) -> GeneratedPrompt:
    """Identical texts become one candidate that remembers every completion index it stands for."""
    if result.skip_reason is not None:
        return GeneratedPrompt(record, [], 0, result.skip_reason)
    by_text: dict[str, dict] = {}
    for index, completion in enumerate(result.completions):
        entry = by_text.setdefault(
            completion.text,
            {"text": completion.text, "completion_indices": [], "num_tokens": completion.num_tokens, "finish_reason": completion.finish_reason},
        )
        entry["completion_indices"].append(index)
    total = len(result.completions)
    if include_reference and record.reference_completion is not None:
        text = record.reference_completion.strip()
        entry = by_text.setdefault(text, {"text": text, "completion_indices": [], "num_tokens": 0, "finish_reason": "reference"})
        entry["completion_indices"].append(total)
        entry["is_reference"] = True
        total += 1
    return GeneratedPrompt(record, [Candidate(**entry) for entry in by_text.values()], total)


def generate_batch(run_id: str, batch_id: int, prompts: list[dict]) -> dict:
    context = runtime.current(run_id)
    config, client, keys = context.config, context.client, RunKeys(run_id)
    records = [PromptRecord.from_dict(p) for p in prompts]
    started = time.perf_counter()
    results = context.generator.generate([r.messages for r in records], config.sampling, batch_seed(config, batch_id))
    seconds = time.perf_counter() - started
    generated = [merge_candidates(r, res, config.include_reference) for r, res in zip(records, results)]
    batch = GeneratedBatch(batch_id, generated)
    completions = sum(len(res.completions) for res in results)
    tokens = sum(c.num_tokens for res in results for c in res.completions)
    needs_scoring = any(p.needs_scoring for p in generated)
    with client.pipeline() as pipe:
        pipe.set(keys.batch(batch_id), json.dumps(batch.to_dict()))
        pipe.hincrby(keys.stats, "prompts_generated", len(records))
        pipe.hincrby(keys.stats, "completions_generated", completions)
        pipe.hincrby(keys.stats, "tokens_generated", tokens)
        pipe.hincrbyfloat(keys.stats, "generation_seconds", seconds)
        pipe.hincrby(keys.stats, "prompts_scored", sum(not p.needs_scoring for p in generated))
        if not needs_scoring:
            pipe.xadd(keys.ready, {"batch_id": batch_id})
        pipe.execute()
    if needs_scoring:
        enqueue_scoring(client, run_id, batch_id, len(config.reward_models))
    return {"prompts": len(records), "completions": completions, "tokens": tokens, "seconds": round(seconds, 3)}
