"""The scoring job: one reward model scores every candidate of a batch; the last model to finish hands the batch on."""

from __future__ import annotations

import json
import logging
import math
import time

from rq import get_current_job

from rsample.workers.backends.base import RewardBackend
from rsample.workers.backends.faults import RewardFunctionFault, WorkerFault
from rsample.workers.common.errors import RsampleError
from rsample.workers.common.messages import Conversation, GeneratedBatch, GeneratedPrompt, PromptScores, failure_reason, reward_label
from rsample.workers.common.reasoning import answer_part
from rsample.workers.runtime import worker_context
from rsample.workers.runtime.keys import RunKeys
from rsample.workers.runtime.safe_job import lost_by_redis
from rsample.workers.stages.isolation import run_isolating_failures

log = logging.getLogger(__name__)


def score_isolating_failures(backend: RewardBackend, model_index: int, prompts: list[GeneratedPrompt],
                             reasoning_end: str | None = None, name: str | None = None) -> dict[str, dict]:
    """Scores all prompts at once; if that raises, one by one, so that a prompt the reward model cannot take is
    skipped with its error and the others keep their scores. A broken worker fails the job instead.

    A backend that reads the rows' columns (`needs_columns`, as verifiers do) gets them, and a prompt whose row
    lacks what it needs (`missing_reason`) is skipped with that reason, unscored. With `reasoning_end`, every reward
    reads a candidate's answer, not its reasoning (`answer_part`). Skip reasons and logs name the reward by its index
    and its `name`."""
    label = reward_label(model_index, name)
    needs_columns = getattr(backend, "needs_columns", False)
    missing = {p.prompt.prompt_id: backend.missing_reason(p.prompt.columns) for p in prompts} if needs_columns else {}
    scorable = [p for p in prompts if missing.get(p.prompt.prompt_id) is None]

    def conversations(prompt: GeneratedPrompt) -> list[Conversation]:
        return [[*prompt.prompt.messages, {"role": "assistant", "content": answer_part(c.text, reasoning_end)}] for c in prompt.candidates]

    def score(batch) -> list[float | None]:
        flat = [c for p in batch for c in conversations(p)]
        if needs_columns:
            return backend.score(flat, [p.prompt.columns for p in batch for _ in p.candidates])
        return backend.score(flat)

    def score_all(batch) -> list[list[float | None]]:
        flat, position, per_prompt = score(batch), 0, []
        for prompt in batch:
            per_prompt.append(flat[position:position + len(prompt.candidates)])
            position += len(prompt.candidates)
        return per_prompt

    verdicts = dict(zip((p.prompt.prompt_id for p in scorable), run_isolating_failures(
        scorable,
        run_all=score_all,
        run_one=lambda prompt: score([prompt]),
        skipped=lambda prompt, error: PromptScores(skip_reason=failure_reason(label, error)),
        rejected=lambda prompt, why: PromptScores(skip_reason=f"{label} {why}"),
        what=label,
        fault=RewardFunctionFault if getattr(backend, "user_code", False) else WorkerFault,
    ))) if scorable else {}
    # None for a candidate longer than the model's context: the aggregation drops that candidate, not the prompt
    result, non_finite = {}, 0
    for prompt in prompts:
        prompt_id = prompt.prompt.prompt_id
        verdict = verdicts.get(prompt_id) if prompt_id in verdicts else PromptScores(skip_reason=missing[prompt_id])
        if not isinstance(verdict, PromptScores):
            scores = [None if score is None or not math.isfinite(score) else score for score in verdict]
            non_finite += sum(score is not None for score in verdict) - sum(score is not None for score in scores)
            verdict = PromptScores(scores=scores)
        result[prompt_id] = verdict.__dict__
    if non_finite:  # an overflow (fp16 trunks do it): such a score ranks nothing, and would make the JSON output invalid
        log.warning("%s gave %d candidate(s) a score that is not a finite number (NaN or infinity): they are "
                    "left unscored, as candidates too long for its context are, and no pair is chosen from them", label, non_finite)
    return result


def score_batch(run_id: str, batch_id: str, model_index: int) -> dict:
    """The scoring job of one reward model for one batch (RQ calls it by name with JSON arguments)."""
    context = worker_context.current(run_id)
    client, keys = context.client, RunKeys(run_id)
    backend = context.reward_models.get(model_index)
    if backend is None:
        raise RuntimeError(f"this worker has not loaded reward model {model_index}")
    refusal = getattr(backend, "refusal", None)
    if refusal is not None:  # not the data's fault: the job fails whole, and a worker that allows it may take it on retry
        raise RsampleError(refusal)
    raw = client.get(keys.batch(batch_id))
    if raw is None:  # already written: a repeated delivery, nothing left to do
        log.info("batch %s of run %s is already written", batch_id, run_id)
        return {"scored": 0}
    batch = GeneratedBatch.from_dict(json.loads(raw))
    to_score = [p for p in batch.prompts if p.needs_scoring(context.config.min_candidates_scored)]
    started = time.perf_counter()
    with context.broken_by_device_faults():
        verdicts = score_isolating_failures(backend, model_index, to_score, context.config.reasoning_end,
                                            context.config.score_names[model_index])
    seconds = time.perf_counter() - started
    num_conversations = sum(len(p.candidates) for p in to_score)
    # the end summary's "gave no score to N of M candidates" counts the policy's candidates, as the report does
    generated = sum(p.samples_in(c) > 0 for p in to_score for c in p.candidates)
    unscored = sum(score is None and prompt.samples_in(candidate) > 0 for prompt in to_score
                   for candidate, score in zip(prompt.candidates, verdicts.get(prompt.prompt.prompt_id, {}).get("scores") or ()))
    job = get_current_job()
    if job is not None and lost_by_redis(job):  # its batch is fed again: scores filed now would be counted and never read
        log.info("batch %s of run %s: Redis lost its scoring job while it ran; nothing written", batch_id, run_id)
        return {"scored": 0, "lost": True}
    with client.pipeline() as pipe:  # MULTI: exactly one scorer sees the last model arrive
        pipe.hset(keys.scores(batch_id), str(model_index), json.dumps(verdicts))
        pipe.hlen(keys.scores(batch_id))
        pipe.hincrby(keys.stats, f"completions_scored:{model_index}", generated)
        pipe.hincrby(keys.stats, f"completions_unscored:{model_index}", unscored)  # the end summary says how many
        pipe.hincrbyfloat(keys.stats, f"scoring_seconds:{model_index}", seconds)
        models_done = pipe.execute()[1]
    if models_done == len(context.config.reward_models):
        with client.pipeline() as pipe:
            pipe.hincrby(keys.stats, "rows_scored", len(to_score))
            pipe.xadd(keys.ready, {"batch_id": batch_id})
            pipe.execute()
    return {"scored": num_conversations}
