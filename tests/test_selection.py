import pytest

from rsample.workers.stages.selection import select_pair


def test_mean_picks_best_and_worst_of_the_average():
    selection = select_pair([[0.1, 0.9, 0.5], [0.3, 0.7, -1.0]], "mean")
    assert (selection.chosen, selection.rejected) == (1, 2)
    assert selection.margin == pytest.approx(0.8 - (-0.25))


def test_mean_with_all_scores_equal_still_gives_two_different_candidates():
    selection = select_pair([[1.0, 1.0, 1.0]], "mean")
    assert selection.chosen != selection.rejected
    assert selection.margin == 0


def test_vote_follows_the_majority_of_models():
    # models 0 and 1 prefer candidate 0 and dislike candidate 2; model 2 disagrees strongly
    scores = [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [-100.0, 0.0, 100.0]]
    by_vote = select_pair(scores, "vote")
    assert (by_vote.chosen, by_vote.rejected) == (0, 2)
    by_mean = select_pair(scores, "mean")
    assert by_mean.chosen == 2  # the outlier dominates the mean, not the vote


def test_vote_never_rejects_the_chosen_candidate():
    # a single model: its best and its worst are distinct; with two models that swap, ties fall back to the mean
    assert select_pair([[5.0, 1.0]], "vote").rejected == 1
    selection = select_pair([[2.0, 0.0], [0.0, 1.0]], "vote")
    assert selection.chosen == 0 and selection.rejected == 1


def test_fewer_than_two_candidates_is_refused():
    with pytest.raises(ValueError):
        select_pair([[1.0]], "mean")
