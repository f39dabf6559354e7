from __future__ import annotations

import math

import numpy as np
import pytest

from e2urec.metrics import (
    accuracy,
    answer_mass,
    auc,
    confidence,
    distribution_distance,
    jsd_per_sample,
    l2_per_sample,
    log_loss,
    mia_auc,
    sample_log_loss,
    utility,
)


def test_utility_metrics_by_hand():
    labels, scores = [1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]
    # pairs (pos, neg): (0.9,0.2) ok, (0.9,0.6) ok, (0.4,0.2) ok, (0.4,0.6) wrong -> 3/4
    assert auc(labels, scores) == pytest.approx(0.75)
    assert accuracy(labels, scores) == pytest.approx(0.5)  # 0.9 and 0.2 right, 0.4 and 0.6 wrong
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4
    assert log_loss(labels, scores) == pytest.approx(expected)
    assert utility(labels, scores) == {
        "auc": pytest.approx(0.75),
        "acc": 0.5,
        "logloss": pytest.approx(expected),
    }
    assert math.isnan(auc([1, 1], [0.2, 0.3]))  # undefined with one class


def test_jsd_and_l2_by_hand():
    p = np.log([[0.5, 0.5, 0.0 + 1e-300], [1.0, 1e-300, 1e-300]])
    q = np.log([[0.5, 0.5, 1e-300], [1e-300, 1.0, 1e-300]])
    jsd = jsd_per_sample(p, q)
    assert jsd[0] == pytest.approx(0.0, abs=1e-12)  # identical rows
    assert jsd[1] == pytest.approx(math.log(2))  # disjoint supports: the maximum, ln 2
    assert l2_per_sample(p, q)[1] == pytest.approx(math.sqrt(2))
    # a worked example: P=(0.8,0.2), Q=(0.4,0.6), M=(0.6,0.4)
    pp, qq = np.log([0.8, 0.2]), np.log([0.4, 0.6])
    kl_pm = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    kl_qm = 0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.6 / 0.4)
    assert jsd_per_sample(pp, qq)[0] == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm)
    d = distribution_distance(np.stack([pp, pp]), np.stack([qq, pp]))
    assert d["jsd"] == pytest.approx((0.5 * kl_pm + 0.5 * kl_qm) / 2)
    assert d["l2"] == pytest.approx(math.sqrt(0.4**2 + 0.4**2) / 2)


def test_answer_distances_read_the_two_answer_tokens_alone():
    # Token 0 is "yes", 1 is "no", 2 stands for the rest of the vocabulary.
    p = np.log([[0.4, 0.1, 0.5], [0.4, 0.1, 0.5]])
    q = np.log([[0.2, 0.3, 0.5], [0.08, 0.02, 0.9]])
    d = distribution_distance(p, q, answer_tokens=(0, 1))
    # Row 1 answers (0.8, 0.2) against (0.4, 0.6); row 2 answers alike, (0.8, 0.2) twice, and
    # differs only in mass off the answers: the full-vocabulary JSD counts it, the answer's not.
    worked = jsd_per_sample(np.log([0.8, 0.2]), np.log([0.4, 0.6]))[0]
    assert d["answer_jsd"] == pytest.approx(worked / 2)
    assert d["answer_l2"] == pytest.approx(math.sqrt(0.4**2 + 0.4**2) / 2)
    assert jsd_per_sample(p, q)[1] > 0.05
    assert d["jsd"] > d["answer_jsd"]
    assert "answer_jsd" not in distribution_distance(p, q)
    assert answer_mass(q, (0, 1)) == pytest.approx((0.5 + 0.1) / 2)


def test_distances_to_retrain_on_the_forget_set_and_on_held_out_samples():
    import torch

    from e2urec.evaluate import Answers, distances_to

    def answers(forget: list[float], heldout: list[float]) -> Answers:
        return Answers(torch.tensor([forget]).log(), torch.tensor([heldout]).log())

    retrain = answers([0.2, 0.3, 0.5], [0.25, 0.25, 0.5])
    # Far from Retrain on the forget set, equal on held-out samples: all of its distance is on
    # what it trained on
    model = answers([0.4, 0.1, 0.5], [0.25, 0.25, 0.5])
    d = distances_to(model, retrain, (0, 1))
    assert d["answer_jsd"] > 0.05 and d["heldout_answer_jsd"] == pytest.approx(0.0, abs=1e-12)
    assert d["heldout_jsd"] == pytest.approx(0.0, abs=1e-12)
    assert {"jsd", "l2", "answer_l2"} <= d.keys()


def test_the_forgetting_teacher_is_judged_against_retrain_at_every_strength():
    import torch

    from e2urec.evaluate import Answers, teacher_distances
    from e2urec.unlearn.base import TeacherAnswers

    def two_way(p_yes: list[float]) -> torch.Tensor:  # columns (yes, no)
        p = torch.tensor(p_yes, dtype=torch.float64)
        return torch.stack([p, 1 - p], -1).log()

    # Two "yes" samples the original memorised (0.9) and Retrain, which never saw them, answers
    # 0.6; the augmented model learned them further (0.99). Column 2 of Retrain's stands for the
    # rest of its vocabulary, which the answer JSD leaves out.
    retrain = torch.cat([two_way([0.6, 0.6]).exp() * 0.5, torch.full((2, 1), 0.5)], -1).log()
    reference = Answers(retrain, retrain)
    teacher = TeacherAnswers(two_way([0.9, 0.9]), two_way([0.99, 0.99]), alpha=32.0)
    d = teacher_distances(teacher, reference, (0, 1), [1, 1])
    by_alpha = {c["alpha"]: c for c in d["curve"]}
    worked = jsd_per_sample(np.log([0.9, 0.1]), np.log([0.6, 0.4]))[0]
    assert d["original"]["answer_jsd"] == pytest.approx(worked)
    assert by_alpha[0.0]["answer_jsd"] == pytest.approx(worked)  # strength 0: the original
    assert d["augmented"]["answer_jsd"] > worked  # the augmented model moved further away
    # Pushing back what the augmented model added first nears Retrain, then overshoots it
    best = min(d["curve"], key=lambda c: c["answer_jsd"])
    assert 0 < best["alpha"] < 32 and best["answer_jsd"] < worked / 4
    assert d["answer_jsd"] == by_alpha[32.0]["answer_jsd"] > 2 * best["answer_jsd"]  # used
    losses = [c["logloss"] for c in d["curve"]]
    assert losses == sorted(losses) and d["logloss"] == losses[-1]  # more strength, more loss
    assert by_alpha[0.0]["logloss"] == pytest.approx(-math.log(0.9))


def test_membership_inference_auc():
    assert mia_auc([0.1, 0.2], [0.5, 0.9]) == pytest.approx(1.0)  # members have lower loss
    assert mia_auc([0.5, 0.9], [0.1, 0.2]) == pytest.approx(0.0)
    assert mia_auc([0.3, 0.3], [0.3, 0.3]) == pytest.approx(0.5)
    losses = sample_log_loss([1, 0], [0.8, 0.8])
    np.testing.assert_allclose(losses, [-math.log(0.8), -math.log(0.2)])


def test_the_attack_sets_one_threshold_per_label():
    # A model that answers "yes" with 0.7 to everyone: the forget users like more often than
    # the held-out users, so their losses are lower on average, yet nothing singles them out.
    forget_labels, heldout_labels = [1, 1, 1, 0], [1, 0, 0, 0]
    member = sample_log_loss(forget_labels, [0.7] * 4)
    nonmember = sample_log_loss(heldout_labels, [0.7] * 4)
    assert mia_auc(member, nonmember) > 0.6  # fooled by the base rates
    assert mia_auc(member, nonmember, forget_labels, heldout_labels) == pytest.approx(0.5)
    # within each label the members' losses are lower: the label-aware attack sees it
    member = sample_log_loss(forget_labels, [0.9, 0.9, 0.9, 0.1])
    assert mia_auc(member, nonmember, forget_labels, heldout_labels) == pytest.approx(1.0)


def test_the_deletion_test_has_the_power_it_states():
    """Simulated attacks: with the minimum forget-sample count, a no-op on memorised users
    (true attack AUC 0.65) fails at least 90% of the time, and a model that forgot (AUC 0.5)
    fails about 5% of the time; with 10 forget samples the no-op mostly passes."""
    from statistics import NormalDist

    from e2urec.metrics import mia_test_power, mia_threshold, min_forget_samples

    n_heldout, band, alpha = 300, 0.02, 0.05
    n = min_forget_samples(0.65, n_heldout, band, alpha, 0.9)
    assert n is not None and 20 < n < 200
    assert mia_test_power(0.65, n, n_heldout, band, alpha) >= 0.9
    assert mia_test_power(0.65, n - 1, n_heldout, band, alpha) < 0.9
    assert mia_test_power(0.65, 10, n_heldout, band, alpha) < 0.5
    assert min_forget_samples(0.65, n_heldout, 0.2, alpha, 0.9) is None  # the band swallows it
    rng = np.random.default_rng(0)

    def fail_rate(true_auc: float, n_forget: int, trials: int = 600) -> float:
        shift = math.sqrt(2) * NormalDist().inv_cdf(true_auc)  # P(member < nonmember) = AUC
        threshold = mia_threshold(n_forget, n_heldout, band, alpha)
        fails = 0
        for _ in range(trials):
            member = rng.normal(-shift, 1.0, n_forget)
            nonmember = rng.normal(0.0, 1.0, n_heldout)
            fails += mia_auc(member, nonmember) > threshold
        return fails / trials

    assert fail_rate(0.65, n) >= 0.86  # 0.9 stated; the slack is Monte Carlo noise
    assert fail_rate(0.5, n) <= 0.08  # a real deletion is rarely refused
    assert fail_rate(0.65, 10) < 0.6


def test_gauc_ranks_within_each_user():
    from e2urec.metrics import gauc

    # user 1 ranked perfectly (2 samples), user 2 reversed (4 samples), user 3 one class (skipped)
    labels = [1, 0, 1, 1, 0, 0, 1]
    scores = [0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.5]
    users = [1, 1, 2, 2, 2, 2, 3]
    assert gauc(labels, scores, users) == pytest.approx((1.0 * 2 + 0.0 * 4) / 6)
    # a score that only knows the user: global AUC can be high while GAUC is 0.5
    labels = [1, 1, 0, 0, 0, 1]
    by_user = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    assert auc(labels, by_user) > 0.5
    assert gauc(labels, by_user, [1, 1, 1, 2, 2, 2]) == pytest.approx(0.5)


def test_auc_standard_error_by_hand():
    from e2urec.metrics import auc_standard_error

    # A = 0.5, 20 positives, 170 negatives: q1 = 1/3, q2 = 1/3
    var = (0.25 + 19 * (1 / 3 - 0.25) + 169 * (1 / 3 - 0.25)) / (20 * 170)
    assert auc_standard_error(0.5, 20, 170) == pytest.approx(var**0.5, rel=1e-9)
    assert auc_standard_error(0.5, 2000, 2000) < auc_standard_error(0.5, 20, 20) / 9
    assert auc_standard_error(0.7, 0, 10) == float("inf")


def test_confidence_reads_how_far_answers_sit_from_a_coin_toss():
    assert confidence([0.5, 0.5]) == 0.0
    assert confidence([0.0, 1.0]) == 1.0
    assert confidence([0.25, 0.75, 0.5, 0.5]) == pytest.approx(0.25)  # |2p - 1| is symmetric
    with pytest.raises(ValueError, match="no predictions"):
        confidence([])
