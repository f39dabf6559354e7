"""Utility metrics of a recommender's P(like) against binary labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve; NaN when only one class is present (it is undefined then)."""
    y = np.asarray(labels)
    if y.min(initial=0) == y.max(initial=0):
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores)))


def accuracy(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> float:
    y, p = np.asarray(labels), np.asarray(scores)
    return float(np.mean((p > threshold) == (y == 1))) if len(y) else float("nan")


def log_loss(labels: Sequence[int], scores: Sequence[float]) -> float:
    y, p = np.asarray(labels, dtype=float), np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def utility(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """AUC, ACC (threshold 0.5) and LogLoss, as the paper reports them."""
    return {
        "auc": auc(labels, scores),
        "acc": accuracy(labels, scores),
        "logloss": log_loss(labels, scores),
    }
