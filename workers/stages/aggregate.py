"""The aggregation stage: a scored batch becomes output rows and one outcome per prompt, by pure functions.

Selection (`selection`) and the rows' shape (`output`) live beside it; the driver's collector feeds it what
the workers left in Redis and commits what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rsample.workers.common.config import RunConfig
from rsample.workers.common.messages import DROPPED_IDENTICAL, DROPPED_MARGIN, PAIR, SKIPPED, GeneratedBatch, Outcome, PromptScores
from rsample.workers.stages.output import pair_row, score_rows
from rsample.workers.stages.selection import select_pair


@dataclass
class BatchOutcome:
    outcomes: list[Outcome] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    score_rows: list[dict] = field(default_factory=list)


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
        if not prompt.needs_scoring:
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
        scores_by_model = [v.scores for v in per_model]
        result.score_rows.extend(score_rows(prompt, scores_by_model, config.reward_models))
        selection = select_pair(scores_by_model, config.combine)
        if config.min_margin is not None and selection.margin < config.min_margin:
            settle(DROPPED_MARGIN)
            continue
        result.rows.append(pair_row(prompt, selection, scores_by_model, config.reward_models))
        settle(PAIR)
    return result
