"""Candidate lists to train a reranker on: the task ``bench.ranking`` measures, as training data.

A pointwise LLMRec learns P(like | the user rated the item). Reranking asks something else:
which of the fifty items a candidate stage proposes will the user go on to rate *and* like.
Every sample here is a point in a user's timeline; its list is what a co-occurrence stage (the
service's, ``e2urec.cooccurrence``) proposes for the history at that point, less what the user
had rated by then, and its positives are the listed items the user rated and liked from then on
(within the samples). Nothing in a list is taken from a test period: only the samples given.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from e2urec.cooccurrence import CoOccurrence
from e2urec.data.samples import Sample


@dataclass(frozen=True, slots=True)
class CandidateList:
    user_id: int
    timestamp: int
    history: tuple[tuple[int, float], ...]  # the prompt's history, as in a Sample
    items: tuple[int, ...]
    stage_scores: tuple[float, ...]  # the co-occurrence score of each item (all > 0)
    positive: tuple[bool, ...]  # rated and liked from ``timestamp`` on

    def __post_init__(self) -> None:
        if not (len(self.items) == len(self.stage_scores) == len(self.positive)):
            raise ValueError("items, stage_scores and positive must have the same length")


def candidate_lists(
    samples: Sequence[Sample],
    per_sample: float,
    seed: int,
    *,
    pool_size: int = 50,
    list_size: int = 20,
    draw_from: Sequence[Sample] | None = None,
) -> list[CandidateList]:
    """About ``per_sample`` lists for each sample of ``draw_from`` (some of ``samples``; all of
    them by default; drawn with ``seed``; a drawn sample whose pool holds no positive gives
    none), each at most ``list_size`` items: every positive in the pool (at most half the list)
    and negatives drawn from the rest of it. ``samples`` is everything the stage and the
    users' timelines are built from: a validation period's lists are drawn from its samples,
    with the train period's behind them.

    The co-occurrence counts leave out the list's own user: their own later ratings would
    otherwise vote for exactly the positives, which a candidate stage serving them never sees.
    Other users' ratings all count, as ``with_unrated``'s pool does. What a user rated before
    ``samples`` begin is unknown here, so such an item can be listed as a negative."""
    if per_sample < 0:
        raise ValueError(f"per_sample must be >= 0, got {per_sample}")
    if pool_size < 2 or list_size < 2:
        raise ValueError(
            f"pool_size and list_size must be at least 2, got {pool_size} and {list_size}"
        )
    if per_sample == 0 or not samples:
        return []
    rated: dict[int, set[int]] = defaultdict(set)
    for s in samples:
        rated[s.user_id].update((s.item_id, *(i for i, _ in s.history)))
    users = sorted(rated)
    row = {u: k for k, u in enumerate(users)}
    index = CoOccurrence.from_ratings(rated, {i for items in rated.values() for i in items})
    by_user: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_user[s.user_id].append(s)
    rng = random.Random(seed)
    out: list[CandidateList] = []
    drawn = list(samples if draw_from is None else draw_from)
    for s in rng.choices(drawn, k=round(len(drawn) * per_sample)) if drawn else []:
        timeline = by_user[s.user_id]
        earlier = {x.item_id for x in timeline if x.timestamp < s.timestamp}
        seen = earlier | {i for i, _ in s.history}
        liked = {x.item_id for x in timeline if x.timestamp >= s.timestamp and x.label} - seen
        weights = np.ones(len(users), dtype=np.float32)
        weights[row[s.user_id]] = 0.0
        scores = index.scores([i for i, _ in s.history], weights)
        if scores is None:
            continue
        pool = index.top(scores, pool_size, exclude=seen)
        positives = [(i, v) for i, v in pool if i in liked][: list_size // 2]
        if not positives:
            continue
        others = [(i, v) for i, v in pool if i not in liked]
        negatives = rng.sample(others, min(len(others), list_size - len(positives)))
        chosen = sorted(positives + negatives, key=lambda iv: -iv[1])  # the stage's order
        out.append(
            CandidateList(
                s.user_id,
                s.timestamp,
                s.history,
                tuple(i for i, _ in chosen),
                tuple(v for _, v in chosen),
                tuple(i in liked for i, _ in chosen),
            )
        )
    return out
