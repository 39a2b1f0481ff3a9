"""Choosing the chosen/rejected pair among a prompt's distinct candidates: pure functions on plain data.

How several reward models combine (`--combine`):
- `mean`: the raw mean of the models' scores. With one model, that model's score; with several, the model with
  the widest scale decides alone (one scoring in [-30, 30] drowns one in [-1, 1]).
- `standardized` (the default with several models): each model's scores standardised over the prompt's candidates
  (minus their mean, over their standard deviation), then averaged: every model weighs the same, whatever its scale.
- `vote`: open-instruct's majority vote, each model voting for its best and its worst candidate; a pair whose
  chosen does not also have the higher standardized score is dropped (the models disagree).
- `lexicographic` (the default when the first reward is a verifier and there are several): the first model
  decides, the next breaks its ties, and so on: correctness first, preference second. The chosen is the best
  verified candidate by the reward model, the rejected the worst candidate by the same order.
The margin (`--min-margin`) and ties are measured on the combined score: raw units with `mean`, standard
deviations with `standardized` and `vote`. With `lexicographic`, the combined score is the first model's, and
the margin is measured on the first model whose scores of chosen and rejected differ (in its raw units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rsample.workers.common.config import COMBINE_METHODS

UNFINISHED = "unfinished"
"""No pair: no candidate that may be chosen scores above another (all cut at --max-new-tokens or empty, or the only
finished ones are the worst)."""
TIE = "tie"
"""No pair: chosen and rejected have the same combined score, so the pair carries no preference."""
DISAGREEMENT = "disagreement"
"""No pair (`vote`): the candidate most models voted best has a lower combined score than the one voted worst."""


@dataclass(frozen=True)
class Selection:
    """The chosen and rejected candidates (indices into the scored candidates), or why there is no pair."""

    chosen: int | None
    rejected: int | None
    combined: list[float]
    """Each candidate's combined score."""
    dropped: str | None = None
    margin: float = 0.0
    """How much better the chosen is than the rejected (see the module's doc for the units)."""


def mean_scores(scores_by_model: list[list[float]]) -> list[float]:
    return [sum(column) / len(column) for column in zip(*scores_by_model)]


def standardized_scores(scores_by_model: list[list[float]]) -> list[float]:
    """Each model's scores as z-scores over the candidates (0 for a model that scores them all alike), averaged."""
    columns = []
    for scores in scores_by_model:
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        columns.append([(s - mean) / std if std > 0 else 0.0 for s in scores])
    return mean_scores(columns)


def _best(indices: list[int], key) -> int:
    """The first of the indices with the largest key, as numpy's argmax (open-instruct's tie-break)."""
    return max(indices, key=lambda i: (key(i), -i))


def _first_best(indices: list[int], value, alike, votes: list[int] | None = None) -> int:
    """The first of the indices (with the most `votes`, if given) whose value is within `alike(i, best)` of the largest:
    scores a rounding error apart are the same, and the same scores must pick the same candidate whatever order the
    reward models come in."""
    if votes is not None:
        most = max(votes[i] for i in indices)
        indices = [i for i in indices if votes[i] == most]
    best = _best(indices, value)
    return next(i for i in indices if value(i) >= value(best) - alike(i, best))


def select_pair(scores_by_model: list[list[float]], method: str, eligible: list[bool] | None = None) -> Selection:
    """`scores_by_model[m][c]` is reward model m's score of candidate c (at least two candidates).

    Only an `eligible` candidate may be chosen (by default a finished, non-empty one); any may be rejected.
    """
    count = len(scores_by_model[0])
    if count < 2:
        raise ValueError("a pair needs at least two distinct candidates")
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combination {method!r}")
    eligible = eligible if eligible is not None else [True] * count
    candidates = [i for i in range(count) if eligible[i]]
    if method == "lexicographic":
        return _lexicographic(scores_by_model, candidates)
    combined = mean_scores(scores_by_model) if method == "mean" else standardized_scores(scores_by_model)
    if not candidates:
        return Selection(None, None, combined, UNFINISHED)
    alike = _rounding(scores_by_model) if method == "mean" else lambda i, j: SAME_SCORE  # z-scores: a scale of 1
    chosen = _first_best(candidates, lambda i: combined[i], alike)
    rejected = _first_best([i for i in range(count) if i != chosen], lambda i: -combined[i], alike)
    margin = combined[chosen] - combined[rejected]
    if margin <= alike(chosen, rejected):  # no candidate that may be chosen beats another, whatever the votes
        return Selection(chosen, rejected, combined, TIE if abs(margin) <= alike(chosen, rejected) else UNFINISHED, margin)
    if method == "vote":
        best_votes, worst_votes = [0] * count, [0] * count
        for scores in scores_by_model:
            best_votes[_best(candidates, lambda i, scores=scores: scores[i])] += 1
            worst_votes[_best(list(range(count)), lambda i, scores=scores: -scores[i])] += 1
        chosen = _first_best(candidates, lambda i: combined[i], alike, votes=best_votes)
        rejected = _first_best([i for i in range(count) if i != chosen], lambda i: -combined[i], alike, votes=worst_votes)
        margin = combined[chosen] - combined[rejected]
        if abs(margin) <= alike(chosen, rejected):
            return Selection(chosen, rejected, combined, TIE)
        if margin < 0:
            return Selection(chosen, rejected, combined, DISAGREEMENT, margin)
    return Selection(chosen, rejected, combined, margin=margin)


SAME_SCORE = 1e-9
"""Combined scores closer than this, relative to the scale of the scores they are made of, are the same: the same
scores summed in another order differ in their last bits, which would turn a tie into a pair whose margin is a
rounding error."""


def _rounding(scores_by_model: list[list[float]]):
    """`alike(i, j)`: how far apart the mean scores of candidates i and j may be and still be the same, by the scores
    each is the mean of. The scale of the two compared, not of the prompt's every candidate: a reward's penalty of
    -1e9 for one candidate made every other difference below 1 a tie, and the first candidate the chosen."""
    scale = [max(abs(score) for score in column) for column in zip(*scores_by_model)]
    return lambda i, j: SAME_SCORE * max(scale[i], scale[j])


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_SCORE * max(abs(a), abs(b))


def _difference(better: tuple, worse: tuple) -> float:
    """The first difference between two candidates' scores, model by model, that is no rounding error (0.0: none)."""
    return next((a - b for a, b in zip(better, worse) if not _same(a, b)), 0.0)


def _lexicographic(scores_by_model: list[list[float]], candidates: list[int]) -> Selection:
    count = len(scores_by_model[0])
    order = [tuple(scores[i] for scores in scores_by_model) for i in range(count)]
    combined = list(scores_by_model[0])
    if not candidates:
        return Selection(None, None, combined, UNFINISHED)
    chosen = candidates[0]
    for i in candidates[1:]:  # the first of the best, scores a rounding error apart being the same (`SAME_SCORE`)
        if _difference(order[i], order[chosen]) > 0:
            chosen = i
    others = [i for i in range(count) if i != chosen]
    rejected = others[0]
    for i in others[1:]:
        if _difference(order[i], order[rejected]) < 0:
            rejected = i
    margin = _difference(order[chosen], order[rejected])
    if margin == 0.0:
        return Selection(chosen, rejected, combined, TIE)
    return Selection(chosen, rejected, combined, UNFINISHED if margin < 0 else None, margin)
