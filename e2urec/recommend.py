"""Top-k recommendations for one user by LLM score over candidate items (no serving concerns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from e2urec.backbones import Backbone
from e2urec.data.prepared import Catalog
from e2urec.data.samples import Splits
from e2urec.scoring import predict_like


@dataclass(frozen=True)
class Recommendation:
    item_id: int
    title: str
    score: float


def latest_history(splits: Splits, user_id: int, k: int) -> tuple[tuple[int, float], ...]:
    """The user's last k ratings known to the splits, oldest first."""
    samples = [
        s
        for part in (splits.train, splits.valid, splits.test)
        for s in part
        if s.user_id == user_id
    ]
    if not samples:
        raise KeyError(f"user {user_id} has no samples in this dataset")
    last = max(samples, key=lambda s: s.timestamp)
    return (*last.history, (last.item_id, last.rating))[-k:]


def rated_and_liked(
    stage: Sequence[float], like: Sequence[float], weight: float = 1.0
) -> np.ndarray:
    """Ranking keys for candidates: log P(rated) + log P(like | rated), up to a constant per
    user. ``stage`` is the candidate stage's (positive) score, standing for how likely the user
    is to rate the item at all; ``like`` the LLM's P(like), trained on rated items only. A
    recommendation the user acts on needs both: on ML-1M, P(like) alone put liked items lower
    than the candidate order did (and `tiny`'s was worse beyond chance), while the product
    with SmolLM2 was not below it (bench/results/ranking-ml1m-4k-blend-negatives-cpu).
    ``weight`` scales log P(like): 1 is the plain product; above 1 gives the LLM's differences
    more say, 0 leaves the candidate stage's order."""
    eps = 1e-12  # a score of exactly 0 must still leave an order
    stage_arr = np.maximum(np.asarray(stage, dtype=np.float64), eps)
    like_arr = np.maximum(np.asarray(like, dtype=np.float64), eps)
    return np.log(stage_arr) + weight * np.log(like_arr)


def blended_order(
    stage: Sequence[float],
    like: Sequence[float],
    tier: Sequence[int] | None = None,
    weight: float = 1.0,
) -> list[int]:
    """Candidate positions, best first, by :func:`rated_and_liked`; ties keep the stage's order.
    ``tier`` (lower first) keeps apart scores on different scales: a popularity count topping
    up a short co-occurrence list is no evidence the user would rate the item, and must not
    outrank every co-occurrence score because counts are larger."""
    keys = rated_and_liked(stage, like, weight)
    tiers = [0] * len(keys) if tier is None else list(tier)
    return sorted(range(len(keys)), key=lambda j: (tiers[j], -keys[j]))


def recommend(
    backbone: Backbone,
    catalog: Catalog,
    user_id: int,
    history: Sequence[tuple[int, float]],
    candidates: Sequence[int],
    k: int = 5,
    *,
    batch_size: int = 64,
) -> list[Recommendation]:
    prompts = [catalog.prompt_for(user_id, history, item) for item in candidates]
    scores = predict_like(backbone, prompts, batch_size=batch_size)
    ranked = sorted(zip(candidates, scores, strict=True), key=lambda x: -x[1])[:k]
    return [Recommendation(i, catalog.items[i].title, float(s)) for i, s in ranked]
