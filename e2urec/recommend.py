"""Top-k recommendations for one user by LLM score over candidate items (no serving concerns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
