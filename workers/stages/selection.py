"""Choosing the chosen/rejected pair among a prompt's distinct candidates: pure functions on plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    chosen: int
    rejected: int
    combined: list[float]
    """The mean over reward models of each candidate's score; the margin is measured on it."""

    @property
    def margin(self) -> float:
        return self.combined[self.chosen] - self.combined[self.rejected]


def mean_scores(scores_by_model: list[list[float]]) -> list[float]:
    return [sum(column) / len(column) for column in zip(*scores_by_model)]


def _argmax(values: list[float]) -> int:
    """First index of the largest value, as numpy's argmax (open-instruct's tie-break)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def select_by_mean(scores_by_model: list[list[float]]) -> Selection:
    combined = mean_scores(scores_by_model)
    chosen = _argmax(combined)
    others = [i for i in range(len(combined)) if i != chosen]
    rejected = min(others, key=lambda i: (combined[i], i))
    return Selection(chosen, rejected, combined)


def select_by_vote(scores_by_model: list[list[float]]) -> Selection:
    """open-instruct's majority vote: each model votes for its best and its worst candidate.

    Ties between vote counts go to the better (for chosen) or worse (for rejected) mean score, and
    rejected is never the chosen candidate.
    """
    combined = mean_scores(scores_by_model)
    count = len(combined)
    best_votes = [0] * count
    worst_votes = [0] * count
    for scores in scores_by_model:
        best_votes[_argmax(scores)] += 1
        worst_votes[_argmax([-s for s in scores])] += 1
    chosen = max(range(count), key=lambda i: (best_votes[i], combined[i], -i))
    rejected = max((i for i in range(count) if i != chosen), key=lambda i: (worst_votes[i], -combined[i], -i))
    return Selection(chosen, rejected, combined)


def select_pair(scores_by_model: list[list[float]], method: str) -> Selection:
    """`scores_by_model[m][c]` is reward model m's score of candidate c; needs at least two candidates."""
    if len(scores_by_model[0]) < 2:
        raise ValueError("a pair needs at least two distinct candidates")
    return select_by_vote(scores_by_model) if method == "vote" else select_by_mean(scores_by_model)
