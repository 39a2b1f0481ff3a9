"""The generation job: n completions per prompt, merged into distinct candidates, handed to scoring."""

from __future__ import annotations

import logging
import time

from workers import runtime
from workers.batching import is_out_of_memory
from workers.config import RunConfig
from workers.generation_backends import GenerationBackend, PromptCompletions
from workers.keys import RunKeys
from workers.messages import Candidate, Conversation, GeneratedBatch, GeneratedPrompt, PromptRecord
from workers.queues import enqueue_scoring

log = logging.getLogger(__name__)


def batch_seed(config: RunConfig, first_row: int) -> int:
    """Each batch its own seed, fixed by the run's seed and its first row: a retried batch samples the same way."""
    return config.sampling.seed * 1_000_003 + first_row


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


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def generate_isolating_failures(backend: GenerationBackend, prompts: list[Conversation], config: RunConfig, seed: int) -> list[PromptCompletions]:
    """One prompt that breaks the backend (not out-of-memory: that is retried) is skipped with its error, alone."""
    try:
        return backend.generate(prompts, config.sampling, seed)
    except Exception as exc:
        if is_out_of_memory(exc) or len(prompts) == 1:
            raise
        log.warning("generation failed for a batch of %d (%s): retrying prompt by prompt", len(prompts), _error_line(exc))
    results = []
    for offset, prompt in enumerate(prompts):
        try:
            results.extend(backend.generate([prompt], config.sampling, seed + offset))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            results.append(PromptCompletions([], f"generation failed: {_error_line(exc)}"))
    return results


def generate_batch(run_id: str, batch_id: str, prompts: list[dict]) -> dict:
    context = runtime.current(run_id)
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
