"""The scoring job: one reward model scores every candidate of a batch; the last model to finish hands the batch on."""

from __future__ import annotations

import json
import logging

from rsample.workers.backends.base import RewardBackend
from rsample.workers.backends.batching import is_out_of_memory
from rsample.workers.common.errors import first_line
from rsample.workers.common.messages import Conversation, GeneratedBatch, GeneratedPrompt, PromptScores
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.keys import RunKeys

log = logging.getLogger(__name__)


def score_isolating_failures(backend: RewardBackend, model_index: int, prompts: list[GeneratedPrompt]) -> dict[str, dict]:
    """Scores all prompts at once; if that raises (not out-of-memory), scores them one by one so that one
    prompt the reward model cannot take is skipped with its error and the others keep their scores."""
    def conversations(prompt: GeneratedPrompt) -> list[Conversation]:
        return [[*prompt.prompt.messages, {"role": "assistant", "content": c.text}] for c in prompt.candidates]

    def verdict(scores: list[float | None]) -> dict:
        """None for a candidate longer than the model's context: the aggregation drops that candidate, not the prompt."""
        return PromptScores(scores=scores).__dict__

    try:
        flat = backend.score([c for p in prompts for c in conversations(p)])
    except Exception as exc:
        if is_out_of_memory(exc) or len(prompts) == 1:
            raise
        log.warning("reward model %d failed on a batch (%s): retrying prompt by prompt", model_index, first_line(exc, with_type=True))
    else:
        verdicts, position = {}, 0
        for prompt in prompts:
            verdicts[prompt.prompt.prompt_id] = verdict(flat[position:position + len(prompt.candidates)])
            position += len(prompt.candidates)
        return verdicts
    verdicts = {}
    for prompt in prompts:
        try:
            verdicts[prompt.prompt.prompt_id] = verdict(backend.score(conversations(prompt)))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            verdicts[prompt.prompt.prompt_id] = PromptScores(skip_reason=f"reward model {model_index} failed: {first_line(exc, with_type=True)}").__dict__
    return verdicts


def score_batch(run_id: str, batch_id: str, model_index: int) -> dict:
    """The scoring job of one reward model for one batch (RQ calls it by name with JSON arguments)."""
    context = worker_context.current(run_id)
    client, keys = context.client, RunKeys(run_id)
    backend = context.reward_models.get(model_index)
    if backend is None:
        raise RuntimeError(f"this worker has not loaded reward model {model_index}")
    raw = client.get(keys.batch(batch_id))
    if raw is None:  # already written: a repeated delivery, nothing left to do
        log.info("batch %s of run %s is already written", batch_id, run_id)
        return {"scored": 0}
    batch = GeneratedBatch.from_dict(json.loads(raw))
    to_score = [p for p in batch.prompts if p.needs_scoring]
    verdicts = score_isolating_failures(backend, model_index, to_score)
    num_conversations = sum(len(p.candidates) for p in to_score)
    with client.pipeline() as pipe:  # MULTI: exactly one scorer sees the last model arrive
        pipe.hset(keys.scores(batch_id), str(model_index), json.dumps(verdicts))
        pipe.hlen(keys.scores(batch_id))
        pipe.hincrby(keys.stats, f"completions_scored:{model_index}", num_conversations)
        models_done = pipe.execute()[1]
    if models_done == len(context.config.reward_models):
        with client.pipeline() as pipe:
            pipe.hincrby(keys.stats, "rows_scored", len(to_score))
            pipe.xadd(keys.ready, {"batch_id": batch_id})
            pipe.execute()
    return {"scored": num_conversations}
