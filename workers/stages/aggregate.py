"""The aggregation stage: a scored batch becomes output rows and one outcome per prompt, by pure functions.

Selection (`selection`) and the rows' shape (`output`) live beside it; the driver's collector feeds it what
the workers left in Redis and commits what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rsample.workers.backends.reward_specs import is_verifier
from rsample.workers.common.config import RunConfig
from rsample.workers.common.messages import (
    DROPPED_DISAGREEMENT,
    DROPPED_IDENTICAL,
    DROPPED_MARGIN,
    DROPPED_TIE,
    DROPPED_UNFINISHED,
    DROPPED_UNVERIFIED,
    GENERATED_OUTCOMES,
    PAIR,
    SKIPPED,
    Candidate,
    GeneratedBatch,
    GeneratedPrompt,
    Outcome,
    PromptScores,
)
from rsample.workers.common.reasoning import answer_part
from rsample.workers.stages import selection
from rsample.workers.stages.output import pair_row, score_rows, sft_row

DROP_OUTCOMES = {selection.UNFINISHED: DROPPED_UNFINISHED, selection.TIE: DROPPED_TIE, selection.DISAGREEMENT: DROPPED_DISAGREEMENT}


@dataclass
class BatchOutcome:
    outcomes: list[Outcome] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    score_rows: list[dict] = field(default_factory=list)
    sft_rows: list[dict] = field(default_factory=list)


def may_be_chosen(candidate: Candidate, keep_truncated: bool, reasoning_end: str | None = None) -> bool:
    """Never an empty answer, nor a completion whose reasoning never ended (the dataset's reference needs no
    reasoning); a completion cut at --max-new-tokens only with --keep-truncated, unless it is the dataset's reference
    too (a sample cut where the reference ends: its text is a whole answer)."""
    if not answer_part(candidate.text, reasoning_end).strip():
        return False
    if reasoning_end and not candidate.is_reference and reasoning_end not in candidate.text:
        return False
    return keep_truncated or candidate.finish_reason != "length" or candidate.is_reference


def settle_prompt(config: RunConfig, prompt: GeneratedPrompt, per_model: list[PromptScores], result: BatchOutcome) -> str:
    """Adds the prompt's score rows, its pair and its SFT row (if any) to `result`; returns its outcome."""
    scores_by_model = [v.scores for v in per_model]
    result.score_rows.extend(score_rows(prompt, scores_by_model, config.score_names))
    usable = [c for c in range(len(prompt.candidates)) if all(scores[c] is not None for scores in scores_by_model)]
    usable_scores = [[scores[c] for c in usable] for scores in scores_by_model]
    may_be = [may_be_chosen(candidate, config.keep_truncated, config.reasoning_end) for candidate in prompt.candidates]
    eligible = [may_be[c] for c in usable]
    if config.sft:
        best = best_for_sft(config, scores_by_model, may_be)
        if best is not None:
            result.sft_rows.append(sft_row(prompt, best, scores_by_model, config.score_names))
    if len(prompt.candidates) < 2:
        return DROPPED_IDENTICAL
    if len(usable) < 2:  # the others have no score from some reward (too long for its context, or left unscored)
        return "fewer than two candidates scored by every reward model (too long for its context, or given no score)"
    verifiers = [scores for spec, scores in zip(config.reward_models, scores_by_model) if is_verifier(spec)]
    narrowed = False
    if verifiers:  # correctness first, whatever `--combine`: the chosen passed every verifier
        right = [all(scores[c] == 1.0 for scores in verifiers) for c in range(len(prompt.candidates))]
        if any(ok and right[c] for c, ok in zip(usable, eligible)):
            verified = [ok and right[c] for c, ok in zip(usable, eligible)]
            narrowed, eligible = verified != eligible, verified
        elif any(ok and is_right for ok, is_right in zip(may_be, right)):
            return "no verified candidate scored by every reward model (too long for its context, or given no score)"
        elif any(eligible):
            return DROPPED_UNVERIFIED
    picked = selection.select_pair(usable_scores, config.combine, eligible)
    if picked.dropped == selection.UNFINISHED and narrowed:  # the other rewards rate every verified answer below a wrong one
        return DROPPED_DISAGREEMENT
    if picked.dropped is not None:
        return DROP_OUTCOMES[picked.dropped]
    if config.min_margin is not None and picked.margin < config.min_margin:
        return DROPPED_MARGIN
    result.rows.append(pair_row(prompt, usable[picked.chosen], usable[picked.rejected], scores_by_model, config.score_names))
    return PAIR


def best_for_sft(config: RunConfig, scores_by_model: list[list[float | None]], eligible: list[bool]) -> int | None:
    """The candidate the pair would choose (by `--combine`) among the eligible ones that every reward scored; with
    verifiers in the run, among those that passed every one of them (a supervised example must be right, and any
    verified answer makes one: one that a reward model could not score, when no other verified answer was scored)."""
    verifiers = [scores for spec, scores in zip(config.reward_models, scores_by_model) if is_verifier(spec)]
    allowed = [ok and all(scores[i] == 1.0 for scores in verifiers) for i, ok in enumerate(eligible)]
    scored = [i for i in range(len(eligible)) if all(scores[i] is not None for scores in scores_by_model)]
    if any(allowed[i] for i in scored):
        if len(scored) == 1:
            return scored[0]
        picked = selection.select_pair([[scores[i] for i in scored] for scores in scores_by_model], config.combine,
                                       [allowed[i] for i in scored])
        return scored[picked.chosen]
    return allowed.index(True) if verifiers and any(allowed) else None


def aggregate_batch(config: RunConfig, batch: GeneratedBatch, verdicts: list[dict[str, dict]], failure: str | None = None) -> BatchOutcome:
    """`verdicts[m]` maps prompt id to reward model m's PromptScores; `failure` gives up the prompts left to score."""
    result = BatchOutcome()
    for prompt in batch.prompts:
        record = prompt.prompt

        def settle(kind: str, reason: str | None = None) -> None:
            result.outcomes.append(Outcome(record.row_index, record.prompt_id, kind, reason))

        if prompt.skip_reason is not None:
            settle(SKIPPED, prompt.skip_reason)
            continue
        if not prompt.needs_scoring(config.min_candidates_scored):
            settle(DROPPED_IDENTICAL)
            continue
        if failure is not None:
            settle(SKIPPED, failure)
            continue
        per_model = [PromptScores.from_dict(v[record.prompt_id]) for v in verdicts]
        reasons = [v.skip_reason for v in per_model if v.skip_reason]
        if reasons:
            settle(SKIPPED, reasons[0])
            continue
        outcome = settle_prompt(config, prompt, per_model, result)
        if outcome in GENERATED_OUTCOMES:
            settle(outcome)
        else:
            settle(SKIPPED, outcome)
    return result
