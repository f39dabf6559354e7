"""Utility metrics of a recommender's P(like) against binary labels."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present (it is undefined then)."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores)))


def accuracy(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> float:
    y, p = np.asarray(labels), np.asarray(scores)
    return float(np.mean((p > threshold) == (y == 1))) if len(y) else float("nan")


def log_loss(labels: Sequence[int], scores: Sequence[float]) -> float:
    y, p = np.asarray(labels, dtype=float), np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def gauc(labels: Sequence[int], scores: Sequence[float], groups: Sequence[int]) -> float:
    """Group AUC: each user's AUC over their own samples, weighted by their sample count.

    Global AUC rewards telling generous users from harsh ones; a recommender ranks items for one
    user at a time, which only GAUC measures. Users with a single class are skipped."""
    y, p, g = np.asarray(labels), np.asarray(scores), np.asarray(groups)
    total, weight = 0.0, 0
    for user in np.unique(g):
        mask = g == user
        if len(np.unique(y[mask])) == 2:
            total += roc_auc_score(y[mask], p[mask]) * int(mask.sum())
            weight += int(mask.sum())
    return total / weight if weight else float("nan")


def utility(
    labels: Sequence[int], scores: Sequence[float], users: Sequence[int] | None = None
) -> dict[str, float]:
    """AUC, ACC (threshold 0.5) and LogLoss as in the paper; GAUC too when users are given."""
    out = {
        "auc": auc(labels, scores),
        "acc": accuracy(labels, scores),
        "logloss": log_loss(labels, scores),
    }
    if users is not None:
        out["gauc"] = gauc(labels, scores, users)
    return out


# -- distances between output distributions (unlearning quality, the paper's definitions) ------


def _as_log_probs(x):
    import torch

    t = torch.as_tensor(x, dtype=torch.float64)
    return t if t.ndim == 2 else t.unsqueeze(0)


def jsd_per_sample(logp, logq) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between rows of two log-probability matrices:
    ``0.5 * KL(P || M) + 0.5 * KL(Q || M)`` with ``M = (P + Q) / 2``."""
    import torch

    lp, lq = _as_log_probs(logp), _as_log_probs(logq)
    lm = torch.logsumexp(torch.stack([lp, lq]), dim=0) - np.log(2.0)
    kl_pm = (lp.exp() * (lp - lm)).sum(-1)
    kl_qm = (lq.exp() * (lq - lm)).sum(-1)
    return (0.5 * kl_pm + 0.5 * kl_qm).clamp(min=0).numpy()


def l2_per_sample(logp, logq) -> np.ndarray:
    """Euclidean norm of the difference between the two probability vectors, per row."""
    lp, lq = _as_log_probs(logp), _as_log_probs(logq)
    return (lp.exp() - lq.exp()).norm(dim=-1).numpy()


def distribution_distance(
    logp, logq, answer_tokens: tuple[int, int] | None = None
) -> dict[str, float]:
    """Mean JSD and L2 over samples between two models' answer-position distributions (the
    paper's: over the full vocabulary).

    With ``answer_tokens`` (yes, no) also ``answer_jsd`` and ``answer_l2``: the same distances
    between the two-way answers, the softmax over those two tokens alone, which is all that
    scoring reads. A base trained on the answer alone (the pretrained recipe) never trained the
    rest of its vocabulary there, so the full-vocabulary distance also counts mass on tokens the
    recommender never answers with."""
    out = {
        "jsd": float(jsd_per_sample(logp, logq).mean()),
        "l2": float(l2_per_sample(logp, logq).mean()),
    }
    if answer_tokens is not None:
        lp, lq = _as_log_probs(logp), _as_log_probs(logq)
        cols = list(answer_tokens)
        ap = lp[:, cols].log_softmax(-1)
        aq = lq[:, cols].log_softmax(-1)
        out["answer_jsd"] = float(jsd_per_sample(ap, aq).mean())
        out["answer_l2"] = float(l2_per_sample(ap, aq).mean())
    return out


def answer_mass(logp, answer_tokens: tuple[int, int]) -> float:
    """Mean probability the two answer tokens hold together in full-vocabulary distributions:
    near 1 when the base was trained on the whole vocabulary there, and free to drift when it
    was trained on the two-way answer alone."""
    return float(_as_log_probs(logp)[:, list(answer_tokens)].logsumexp(-1).exp().mean())


def confidence(p: Sequence[float]) -> float:
    """Mean |2 P(like) - 1|: 0 when every answer is a coin toss, 1 when every one is certain.
    Read beside the forget and held-out losses: a change that only flattens every prediction
    raises a confident model's forget loss and lowers its held-out loss at once, which looks
    like forgetting to a loss-threshold attack but is not."""
    if len(p) == 0:
        raise ValueError("confidence of no predictions")
    return float(np.mean(np.abs(2 * np.asarray(p, dtype=float) - 1)))


# -- membership inference ------------------------------------------------------------------


def mia_auc(
    member_losses: Sequence[float],
    nonmember_losses: Sequence[float],
    member_labels: Sequence[int] | None = None,
    nonmember_labels: Sequence[int] | None = None,
) -> float:
    """AUC of a loss-threshold attack: members are guessed where the loss is low.

    0.5 means the attacker cannot tell the forget set from held-out data; a model that still
    remembers its training data scores above 0.5.

    With the labels, the attacker (who knows the rating it asks about) sets one threshold per
    label: the AUC within each label, weighted by the pairs each contributes. Otherwise a
    forget set that simply likes more often than the held-out users would look "remembered"
    by any model that leans towards "yes", a retrained one included.
    """
    if member_labels is None or nonmember_labels is None:
        losses = np.concatenate([np.asarray(member_losses), np.asarray(nonmember_losses)])
        is_member = np.concatenate([np.ones(len(member_losses)), np.zeros(len(nonmember_losses))])
        return auc(is_member, -losses)
    m, n = np.asarray(member_losses), np.asarray(nonmember_losses)
    ml, nl = np.asarray(member_labels), np.asarray(nonmember_labels)
    total, pairs = 0.0, 0
    for label in (0, 1):
        mm, nn = m[ml == label], n[nl == label]
        if len(mm) and len(nn):
            total += mia_auc(mm, nn) * len(mm) * len(nn)
            pairs += len(mm) * len(nn)
    return total / pairs if pairs else float("nan")


def sample_log_loss(labels: Sequence[int], scores: Sequence[float]) -> np.ndarray:
    """Per-sample binary cross-entropy of P(like): the attacker's signal."""
    y, p = np.asarray(labels, dtype=float), np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def auc_standard_error(auc_value: float, n_positive: int, n_negative: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC estimated from ``n_positive`` and
    ``n_negative`` samples: how far it could move by sampling alone."""
    a = float(auc_value)
    if n_positive < 1 or n_negative < 1:
        return float("inf")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (
        n_positive * n_negative
    )
    return float(np.sqrt(max(var, 0.0)))


# -- the membership test a deletion must pass ------------------------------------------------


def mia_threshold(n_forget: int, n_heldout: int, band: float, false_alarm: float) -> float:
    """The highest attack AUC a forgotten set may show: 0.5 plus a tolerated ``band`` plus the
    one-sided ``1 - false_alarm`` quantile of the AUC's sampling noise at 0.5. A deletion that
    really left the forget set looking like never-trained data (true AUC <= 0.5 + band) fails
    with probability at most ``false_alarm``."""
    se = auc_standard_error(0.5, n_forget, n_heldout)
    return 0.5 + band + NormalDist().inv_cdf(1 - false_alarm) * se


def mia_test_power(
    memorised_auc: float, n_forget: int, n_heldout: int, band: float, false_alarm: float
) -> float:
    """Probability that the test above fails a model whose true attack AUC on the forget set is
    ``memorised_auc`` (a no-op on users the base memorised), under the normal approximation."""
    threshold = mia_threshold(n_forget, n_heldout, band, false_alarm)
    se = auc_standard_error(memorised_auc, n_forget, n_heldout)
    return 1.0 - NormalDist().cdf((threshold - memorised_auc) / se) if se > 0 else 0.0


def min_forget_samples(
    memorised_auc: float,
    n_heldout: int,
    band: float,
    false_alarm: float,
    power: float,
    most: int = 1_000_000,
) -> int | None:
    """The fewest forget samples with which the test fails a no-op at ``memorised_auc`` with
    probability at least ``power`` (None if even ``most`` cannot: too few held-out samples, or
    a band that swallows the effect). Power grows with the count, so a bisection finds it."""
    if mia_test_power(memorised_auc, most, n_heldout, band, false_alarm) < power:
        return None
    lo, hi = 1, most
    while lo < hi:
        mid = (lo + hi) // 2
        if mia_test_power(memorised_auc, mid, n_heldout, band, false_alarm) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo
