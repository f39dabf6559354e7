"""The ranking bench's verdict: a rerank 'beats' the candidate order only beyond chance."""

import numpy as np

from bench.ranking import hit_and_ndcg, ordered, paired_difference, verdict
from e2urec.recommend import blended_order, rated_and_liked


def test_hit_and_ndcg_reward_a_liked_item_higher_in_the_list():
    assert hit_and_ndcg([5, 6, 7], {9}, 3) == (0.0, 0.0)
    first, third = hit_and_ndcg([9, 6, 7], {9}, 3), hit_and_ndcg([6, 7, 9], {9}, 3)
    assert first == (1.0, 1.0) and third[0] == 1.0 and 0 < third[1] < first[1]


def test_a_few_more_hits_among_few_users_is_not_a_win():
    better = np.r_[np.ones(30), np.zeros(70)]  # 30 of 100 users hit against none
    clear = paired_difference(better, np.zeros(100))
    assert clear["low"] > 0 and abs(clear["mean"] - 0.3) < 1e-9
    # 7 hits against 4 among 39 users (the first ranking run): the interval straddles 0
    rerank = np.r_[np.ones(7), np.zeros(32)]
    stage = np.r_[np.zeros(5), np.ones(4), np.zeros(30)]  # 2 of its 4 hits shared
    noisy = paired_difference(rerank, stage)
    assert noisy["low"] < 0 < noisy["high"]
    assert verdict({"hr": noisy, "ndcg": noisy}) == "not beyond chance"
    assert verdict({"hr": clear, "ndcg": clear}) == "yes"
    worse = paired_difference(np.zeros(100), better)
    assert verdict({"hr": clear, "ndcg": worse}) == "better on HR, worse on NDCG"


def test_rated_and_liked_weighs_the_stage_score_against_the_like_probability():
    pool = [10, 11, 12]
    # equal P(like): the candidate stage's order stands, ties included
    assert ordered(pool, rated_and_liked(np.array([9.0, 3.0, 3.0]), np.full(3, 0.5))) == pool
    # twice as likely to be liked beats a 1.5x higher chance of being rated, not a 3x one
    like = np.array([0.3, 0.6, 0.3])
    assert ordered(pool, rated_and_liked(np.array([1.5, 1.0, 0.1]), like))[0] == 11
    assert ordered(pool, rated_and_liked(np.array([3.0, 1.0, 0.1]), like))[0] == 10
    # a P(like) of 0 ranks last instead of failing
    assert ordered(pool, rated_and_liked(np.ones(3), np.array([0.0, 0.2, 0.1]))) == [11, 12, 10]


def test_a_popularity_top_up_never_outranks_co_occurrence_evidence():
    # the third candidate tops up a short co-occurrence list with a popularity count of 900:
    # on the blended scale it would win; as no evidence of a rating, it comes after the others
    stage, like = [4.0, 2.0, 900.0], [0.4, 0.9, 0.9]  # blended: 1.6, 1.8, 810
    assert blended_order(stage, like) == [2, 1, 0]
    assert blended_order(stage, like, tier=[0, 0, 1]) == [1, 0, 2]
    # the tiers the service and the bench pass come from the candidates' source
    from service.serving.candidates import Candidate

    assert [Candidate(1, s, 1.0).tier for s in ("co-occurrence", "popularity")] == [0, 1]


def test_pooling_two_periods_counts_a_user_in_both_once():
    from bench.ranking import clustered_difference

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 40).astype(float), rng.integers(0, 2, 40).astype(float)
    alone = paired_difference(a, b)
    # distinct users: the same estimate and about the same interval as the paired one
    distinct = clustered_difference(a, b, list(range(40)))
    assert abs(distinct["mean"] - alone["mean"]) < 1e-12
    assert abs((distinct["high"] - distinct["low"]) - (alone["high"] - alone["low"])) < 0.05
    # every user seen twice with the same outcome is no new evidence: the interval stays as
    # wide as with one copy, where treating the copies as new users would narrow it by ~1/sqrt(2)
    twice = clustered_difference(np.r_[a, a], np.r_[b, b], list(range(40)) * 2)
    naive = paired_difference(np.r_[a, a], np.r_[b, b])
    width = twice["high"] - twice["low"]
    assert abs(width - (alone["high"] - alone["low"])) < 0.05
    assert width > 1.25 * (naive["high"] - naive["low"])


def test_saved_scores_belong_to_the_same_candidate_lists(tmp_path):
    import json

    import pytest
    import typer

    from bench.ranking import SavedScores

    path = tmp_path / "scores.json"
    path.write_text(
        json.dumps({"candidates": {"7": [3, 1, 2]}, "P(like): m": {"7": [0.2, 0.9, 0.5]}})
    )
    assert SavedScores(path, "m")(7, (), [3, 1, 2]).tolist() == [0.2, 0.9, 0.5]
    with pytest.raises(typer.BadParameter, match="user 7's candidates differ"):
        SavedScores(path, "m")(7, (), [1, 3, 2])  # another order is another list
    with pytest.raises(typer.BadParameter, match=r"no scores for 'other'; it has \['m'\]"):
        SavedScores(path, "other")


def test_a_run_writes_only_the_scores_it_measured():
    from bench.ranking import own_scores

    kept = {
        "candidates": {"1": [10, 11]},
        "P(like): new": {"1": [0.1, 0.2]},
        "P(like): old (saved)": {"1": [0.3, 0.4]},
    }
    assert own_scores(kept) == {"candidates": {"1": [10, 11]}, "P(like): new": {"1": [0.1, 0.2]}}
    assert "P(like): old (saved)" in kept  # the fit still reads it


def _saved(relevant: dict[str, list[int]], like: dict[str, list[float]]) -> dict:
    """A period's scores.json for two users with the same candidate-stage scores."""
    return {
        "candidates": {"1": [10, 11, 12], "2": [20, 21, 22]},
        "candidate stage": {"1": [3.0, 2.0, 1.0], "2": [3.0, 2.0, 1.0]},
        "tiers": {"1": [0, 0, 0], "2": [0, 0, 0]},
        "relevant": relevant,
        "P(like): m": like,
    }


def test_the_blend_weight_is_fitted_on_one_period_and_may_reject_the_llm():
    from bench.ranking import blend_hits, fit_blend_weight

    # the LLM points at each user's liked item: the plain product (1) finds both, half the
    # weight finds one, weight 0 (the candidate order) none; ties go to the weight nearest 1
    helpful = _saved({"1": [11], "2": [22]}, {"1": [0.2, 0.6, 0.2], "2": [0.1, 0.2, 0.9]})
    weight, curve = fit_blend_weight(helpful, "m", k=1)
    assert weight == 1.0 and curve["0"] == 0.0 and curve["0.5"] == 0.5 and curve["1"] == 1.0
    assert blend_hits(helpful, "m", 0.5, 1) == ([1.0, 0.0], [1.0, 0.0])
    # the LLM points away from user 1's liked item at every weight: only the order itself wins
    misleading = _saved({"1": [10], "2": [20]}, {"1": [0.05, 0.9, 0.9], "2": [0.5, 0.5, 0.5]})
    weight, curve = fit_blend_weight(misleading, "m", k=1)
    assert weight == 0.0 and curve["0"] == 1.0 and curve["0.25"] == 0.5
    # weight 0 is the candidate order whatever the LLM says
    assert blended_order([3.0, 2.0, 1.0], [0.01, 0.5, 0.99], weight=0.0) == [0, 1, 2]
