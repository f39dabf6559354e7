from __future__ import annotations

import math

import numpy as np
import pytest

from e2urec.metrics import (
    accuracy,
    auc,
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


def test_membership_inference_auc():
    assert mia_auc([0.1, 0.2], [0.5, 0.9]) == pytest.approx(1.0)  # members have lower loss
    assert mia_auc([0.5, 0.9], [0.1, 0.2]) == pytest.approx(0.0)
    assert mia_auc([0.3, 0.3], [0.3, 0.3]) == pytest.approx(0.5)
    losses = sample_log_loss([1, 0], [0.8, 0.8])
    np.testing.assert_allclose(losses, [-math.log(0.8), -math.log(0.2)])


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
