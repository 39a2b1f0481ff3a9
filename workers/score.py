"""The scoring job: one reward model scores every candidate of a batch; the last model to finish hands the batch on."""

from __future__ import annotations

import json
import logging

from workers import runtime
from workers.keys import RunKeys
from workers.messages import GeneratedBatch, PromptScores

log = logging.getLogger(__name__)


def score_batch(run_id: str, batch_id: int, model_index: int) -> dict:
    context = runtime.current(run_id)
    client, keys = context.client, RunKeys(run_id)
    backend = context.reward_models.get(model_index)
    if backend is None:
        raise RuntimeError(f"this worker has not loaded reward model {model_index}")
    raw = client.get(keys.batch(batch_id))
    if raw is None:  # already aggregated: this is a duplicate delivery, nothing left to do
        log.info("batch %s of run %s is already aggregated", batch_id, run_id)
        return {"scored": 0}
    batch = GeneratedBatch.from_dict(json.loads(raw))
    to_score = [p for p in batch.prompts if p.needs_scoring]
    conversations = [
        [*p.prompt.messages, {"role": "assistant", "content": c.text}] for p in to_score for c in p.candidates
    ]
    flat = backend.score(conversations)
    verdicts: dict[str, dict] = {}
    position = 0
    for prompt in to_score:
        scores = flat[position:position + len(prompt.candidates)]
        position += len(prompt.candidates)
        if any(s is None for s in scores):
            verdict = PromptScores(skip_reason=f"conversation longer than reward model {model_index}'s context")
        else:
            verdict = PromptScores(scores=scores)
        verdicts[prompt.prompt.prompt_id] = verdict.__dict__
    num_models = len(context.config.reward_models)
    with client.pipeline() as pipe:  # MULTI: exactly one scorer sees the last model arrive
        pipe.hset(keys.scores(batch_id), str(model_index), json.dumps(verdicts))
        pipe.hlen(keys.scores(batch_id))
        pipe.hincrby(keys.stats, f"completions_scored:{model_index}", len(conversations))
        models_done = pipe.execute()[1]
    if models_done == num_models:
        with client.pipeline() as pipe:
            pipe.hincrby(keys.stats, "prompts_scored", len(to_score))
            pipe.xadd(keys.ready, {"batch_id": batch_id})
            pipe.execute()
    return {"scored": len(conversations)}
