"""Choosing the pair: combination methods, who may be chosen, ties and disagreements, on plain data."""

import random

import pytest

from rsample.workers.common.config import default_combine
from rsample.workers.stages.selection import DISAGREEMENT, TIE, UNFINISHED, select_pair, standardized_scores


def test_mean_picks_best_and_worst_of_the_average():
    selection = select_pair([[0.1, 0.9, 0.5], [0.3, 0.7, -1.0]], "mean")
    assert (selection.chosen, selection.rejected, selection.dropped) == (1, 2, None)
    assert selection.margin == pytest.approx(0.8 - (-0.25))


def test_all_scores_equal_is_a_tie_not_a_pair():
    selection = select_pair([[1.0, 1.0, 1.0]], "mean")
    assert selection.dropped == TIE
    assert selection.chosen != selection.rejected


def test_standardized_weighs_every_model_the_same_whatever_its_scale():
    # model 0 scores in [-30, 30] and prefers candidate 0; models 1 and 2 score in [-1, 1] and prefer candidate 2
    scores = [[30.0, 0.0, -30.0], [-1.0, 0.0, 1.0], [-0.9, 0.1, 1.0]]
    assert select_pair(scores, "mean").chosen == 0  # the widest scale decides alone
    selection = select_pair(scores, "standardized")
    assert (selection.chosen, selection.rejected) == (2, 0)
    # z-scores computed by hand for model 0: mean 0, population std sqrt(600)
    assert standardized_scores([scores[0]]) == pytest.approx([30 / 600**0.5, 0.0, -30 / 600**0.5])
    assert standardized_scores([[2.0, 2.0]]) == [0.0, 0.0]  # a model that cannot tell them apart says nothing


def test_several_models_default_to_a_scale_free_combination_or_to_correctness_first():
    assert default_combine(("rm",)) == "mean"
    assert default_combine(("rm", "rm2")) == "standardized"
    assert default_combine(("verify:math", "rm")) == "lexicographic"  # a verifier first: the usual reasoning recipe
    assert default_combine(("rm", "verify:math")) == "standardized"


@pytest.mark.parametrize("seed", range(30))
def test_lexicographic_picks_the_first_and_last_candidates_of_the_tuple_order(seed):
    """The first model decides, the next breaks its ties: against a sort of (score tuple, -index) done here."""
    import random

    rng = random.Random(seed)
    count = rng.randint(2, 7)
    verifier = [float(rng.random() < 0.5) for _ in range(count)]
    reward = [float(rng.choice([1, 2, 3])) for _ in range(count)]
    eligible = [rng.random() < 0.8 for _ in range(count)]
    picked = select_pair([verifier, reward], "lexicographic", eligible)
    candidates = [i for i in range(count) if eligible[i]]
    if not candidates:
        assert picked.dropped == "unfinished" and picked.chosen is None
        return
    best = max(candidates, key=lambda i: ((verifier[i], reward[i]), -i))
    worst = max([i for i in range(count) if i != best], key=lambda i: ((-verifier[i], -reward[i]), -i))
    assert (picked.chosen, picked.rejected) == (best, worst)
    gaps = [a - b for a, b in zip((verifier[best], reward[best]), (verifier[worst], reward[worst])) if a != b]
    if not gaps:
        assert picked.dropped == "tie"
    else:
        assert picked.margin == gaps[0] and picked.dropped == (None if gaps[0] > 0 else "unfinished")
    assert picked.combined == verifier  # the decider's scores


def test_lexicographic_prefers_a_verified_answer_however_the_reward_model_rates_it():
    verifier, reward = [0.0, 1.0, 0.0, 1.0], [9.0, -3.0, 5.0, -1.0]
    picked = select_pair([verifier, reward], "lexicographic")
    assert (picked.chosen, picked.rejected, picked.margin) == (3, 2, 1.0)  # verified and preferred; wrong and least preferred
    assert select_pair([verifier, reward], "standardized").chosen == 0  # averaging lets the reward model overrule correctness
    all_right = select_pair([[1.0, 1.0, 1.0], [2.0, 7.0, 4.0]], "lexicographic")
    assert (all_right.chosen, all_right.rejected, all_right.margin) == (1, 0, 5.0)  # the reward model breaks the tie


def test_vote_follows_the_majority_of_models():
    # models 0 and 1 prefer candidate 0 and dislike candidate 2; model 2 disagrees strongly
    scores = [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [-100.0, 0.0, 100.0]]
    by_vote = select_pair(scores, "vote")
    assert (by_vote.chosen, by_vote.rejected, by_vote.dropped) == (0, 2, None)
    assert select_pair(scores, "mean").chosen == 2  # the outlier dominates the mean, not the vote


def test_vote_never_writes_a_chosen_with_the_lower_combined_score():
    """Over many random panels of reward models, a voted pair always has chosen above rejected on the combined score;
    when the vote says otherwise, the prompt is dropped as a disagreement (which does happen)."""
    rng = random.Random(7)
    disagreements = 0
    for _ in range(3000):
        scores = [[rng.gauss(0, 1) ** 3 for _ in range(rng.randint(3, 10))] for _ in range(5)]
        scores = [row[:len(scores[0])] + [0.0] * (len(scores[0]) - len(row)) for row in scores]
        selection = select_pair(scores, "vote")
        if selection.dropped == DISAGREEMENT:
            disagreements += 1
            assert selection.combined[selection.chosen] < selection.combined[selection.rejected]
        else:
            assert selection.dropped is None
            assert selection.combined[selection.chosen] > selection.combined[selection.rejected]
    assert disagreements > 0


def test_vote_never_rejects_the_chosen_candidate():
    assert select_pair([[5.0, 1.0]], "vote").rejected == 1
    selection = select_pair([[2.0, 0.0], [0.0, 1.0]], "vote")
    assert selection.chosen != selection.rejected


def test_a_candidate_that_may_not_be_chosen_can_still_be_rejected():
    # candidate 1 scores best but was cut off: the best finished one (0) is chosen, and 1 is not rejected since 2 is worse
    selection = select_pair([[2.0, 9.0, -1.0]], "mean", eligible=[True, False, True])
    assert (selection.chosen, selection.rejected) == (0, 2)
    # the cut-off candidate is the worst: it is the rejected one
    selection = select_pair([[2.0, -9.0, 1.0]], "mean", eligible=[True, False, True])
    assert (selection.chosen, selection.rejected) == (0, 1)


def test_no_pair_when_no_finished_candidate_beats_another():
    assert select_pair([[1.0, 2.0]], "mean", eligible=[False, False]).dropped == UNFINISHED
    # the only finished candidate is the worst: choosing it would teach the opposite preference
    assert select_pair([[5.0, 1.0]], "mean", eligible=[False, True]).dropped == UNFINISHED


def test_fewer_than_two_candidates_is_refused():
    with pytest.raises(ValueError):
        select_pair([[1.0]], "mean")


def test_scores_alike_in_exact_arithmetic_are_a_tie_whatever_order_the_floats_are_added_in():
    """Summed in another order, equal combined scores differ in their last bits: a pair whose margin is a rounding error
    (1e-17) was written where there is no preference."""
    assert sum([0.1, 0.2, 0.3]) / 3 != sum([0.3, 0.2, 0.1]) / 3  # the case: the floats differ
    assert select_pair([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]], "mean").dropped == TIE
    # two 0/1 rewards of opposite opinions, standardized: every candidate's mean z-score is 0 (1.41 - 1.41, -0.71 + 0.71)
    assert select_pair([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], "standardized").dropped == TIE
    # the same values rotated over three rewards: every candidate's mean z-score is the same
    assert select_pair([[-2.2, 2.1, 1.6], [2.1, 1.6, -2.2], [1.6, -2.2, 2.1]], "standardized").dropped == TIE
    assert select_pair([[-2.2, 2.1, 1.6], [2.1, 1.6, -2.2], [1.6, -2.2, 2.1]], "vote").dropped == TIE
    # a real difference far below the scores' scale still ranks, in either unit
    assert select_pair([[1000.0, 1000.0 + 1e-4]], "mean").chosen == 1
    assert select_pair([[0.0, 1e-6, 1.0], [0.0, 0.0, 1.0]], "standardized").rejected == 0


def test_vote_where_no_finished_candidate_beats_another_is_unfinished_not_a_disagreement():
    """The only finished candidate scores lowest: `mean` and `standardized` drop the prompt as unfinished; `vote` said the
    models disagreed, with one model, which has nothing to disagree with."""
    finished_only_first = [True, False, False]
    for method in ("mean", "standardized", "vote"):
        assert select_pair([[1.0, 5.0, 3.0]], method, finished_only_first).dropped == UNFINISHED


def test_a_tie_is_a_tie_even_where_its_rounding_errors_straddle_a_grid_line():
    """Rounding the combined scores to a grid split two values a rounding error apart that fell either side of a line."""
    a, b, c = 0.8900225798255166, -4.654741698486584, 3.7647121016379566
    picked = select_pair([[a, c], [b, a], [c, b]], "mean")
    assert 0 < abs(picked.combined[0] - picked.combined[1]) < 1e-15  # the case: the same scores, another order
    assert picked.dropped == TIE


def test_the_same_scores_pick_the_same_pair_whatever_order_the_reward_models_come_in():
    """Votes tied, the candidates' combined scores were compared as floats: summed in another order, one a rounding error
    above the other won, and a pair became a tie in 2 of the 6 orders of the same three models."""
    import itertools

    table = [[2.0, 0.0, 0.0, 1.0], [1.0, 2.0, 1.0, 2.0], [0.0, 0.0, 2.0, 1.0]]
    for method in ("vote", "standardized", "mean"):
        picks = {(s.chosen, s.rejected, s.dropped) for s in (select_pair(list(order), method) for order in itertools.permutations(table))}
        assert len(picks) == 1, (method, picks)


def test_a_huge_penalty_on_one_candidate_leaves_the_others_differences_intact():
    """The rounding tolerance was a billionth of the prompt's largest score: a reward's -1e9 for one candidate made
    every difference below 1 a tie, and the first candidate (0.1) the chosen over 0.4."""
    scores = [[0.1, 0.2, 0.3, 0.4, -1e9]]
    picked = select_pair(scores, "mean")
    assert (picked.chosen, picked.rejected, picked.dropped) == (3, 4, None)
    assert select_pair([[1e9, 0.4, 0.3, 0.2, 0.1]], "mean", [False, True, True, True, True]).chosen == 1
    picked = select_pair([[0.1, 0.2, 0.3, 0.4, -1e9], [0.5, 0.5, 0.5, 0.5, 0.5]], "mean")
    assert (picked.chosen, picked.rejected) == (3, 4)


def test_mean_scores_a_rounding_error_apart_are_still_a_tie_in_either_model_order():
    a, b, c = 0.1, 0.2, 0.3
    first = [[a, c], [b, b], [c, a]]  # candidate 0 sums 0.1 + 0.2 + 0.3, candidate 1 0.3 + 0.2 + 0.1: last bits differ
    assert sum(column[0] for column in first) != sum(column[1] for column in first)
    assert select_pair(first, "mean").dropped == TIE
    assert select_pair(first[::-1], "mean").dropped == TIE


def test_lexicographic_scores_a_rounding_error_apart_are_the_same():
    """0.1 + 0.2 against 0.3 made a pair of margin 5.6e-17 with `lexicographic`, a tie with `mean`."""
    picked = select_pair([[0.1 + 0.2, 0.3, 0.1 + 0.2, 0.3]], "lexicographic")
    assert picked.dropped == TIE
    picked = select_pair([[1.0, 1.0, 1.0], [0.1 + 0.2, 0.5, 0.3]], "lexicographic")  # the second model decides, its rounding no difference
    assert (picked.chosen, picked.dropped) == (1, None) and picked.rejected == 0 and picked.margin == 0.5 - (0.1 + 0.2)
