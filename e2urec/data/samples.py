"""Samples and splits, following the paper's protocol.

Interactions are sorted by time (ties by user, then item); each rating becomes a sample whose
history is that user's previous K ratings. The last N samples are split 60/20/20 chronologically,
and a seeded fraction of the train split's users forms the forget set.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from e2urec.cooccurrence import CoOccurrence
from e2urec.data.schema import Dataset


@dataclass(frozen=True, slots=True)
class Sample:
    user_id: int
    item_id: int
    rating: float
    label: int
    timestamp: int
    history: tuple[tuple[int, float], ...]  # (item_id, rating), oldest first


@dataclass(frozen=True)
class SampleConfig:
    history_len: int = 10  # K previous items in the prompt
    max_samples: int | None = 100_000  # keep the last N samples; None keeps all
    like_threshold: float = 3.0  # label = rating > threshold
    min_history: int = 1  # a sample with no history carries nothing personal
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    forget_fraction: float = 0.2  # of the train split's distinct users
    # Users none of the models trains on, drawn like the forget users (the next ones in the same
    # shuffle): never-trained data of the same period, which a membership attack compares the
    # forget set with. 0 keeps the paper's protocol.
    heldout_fraction: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise ValueError(f"history_len must be at least 1, got {self.history_len}")
        if self.max_samples is not None and self.max_samples < 5:
            raise ValueError(f"max_samples must be at least 5, got {self.max_samples}")
        if len(self.split) != 3 or abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(
                f"split must be three positive fractions summing to 1, got {self.split}"
            )
        if not 0.0 <= self.forget_fraction < 1.0:
            raise ValueError(f"forget_fraction must be in [0, 1), got {self.forget_fraction}")
        if self.heldout_fraction < 0 or self.forget_fraction + self.heldout_fraction >= 1.0:
            raise ValueError(
                "heldout_fraction must be >= 0 and leave retained users beside the forget ones, "
                f"got {self.heldout_fraction} with forget_fraction {self.forget_fraction}"
            )


@dataclass
class Splits:
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]
    forget_users: frozenset[int] = field(default_factory=frozenset)
    heldout_users: frozenset[int] = field(default_factory=frozenset)

    @property
    def forget(self) -> list[Sample]:
        """Train samples of the users to forget."""
        return [s for s in self.train if s.user_id in self.forget_users]

    @property
    def retain(self) -> list[Sample]:
        """Train samples of everyone else: what retraining from scratch would use."""
        excluded = self.forget_users | self.heldout_users
        return [s for s in self.train if s.user_id not in excluded]

    @property
    def heldout(self) -> list[Sample]:
        """Train-period samples of the held-out users: never trained on by any model."""
        return [s for s in self.train if s.user_id in self.heldout_users]

    @property
    def trained(self) -> list[Sample]:
        """What the original trains on: the train split less the held-out users."""
        return [s for s in self.train if s.user_id not in self.heldout_users]

    def named(self, name: str) -> list[Sample]:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


SPLIT_NAMES = ("train", "valid", "test", "forget", "retain")


def build_samples(dataset: Dataset, config: SampleConfig) -> list[Sample]:
    """All samples in chronological order, the last ``max_samples`` of them."""
    ordered = sorted(dataset.interactions, key=lambda x: (x.timestamp, x.user_id, x.item_id))
    histories: dict[int, deque[tuple[int, float]]] = defaultdict(
        lambda: deque(maxlen=config.history_len)
    )
    samples: list[Sample] = []
    for x in ordered:
        history = histories[x.user_id]
        if len(history) >= config.min_history:
            samples.append(
                Sample(
                    x.user_id,
                    x.item_id,
                    x.rating,
                    int(x.rating > config.like_threshold),
                    x.timestamp,
                    tuple(history),
                )
            )
        history.append((x.item_id, x.rating))
    if config.max_samples is not None:
        samples = samples[-config.max_samples :]
    return samples


def split_samples(samples: list[Sample], config: SampleConfig) -> Splits:
    """Chronological 60/20/20 split and a seeded choice of forget users among train users."""
    if len(samples) < 5:
        raise ValueError(f"need at least 5 samples to split, got {len(samples)}")
    n = len(samples)
    n_train = int(n * config.split[0])
    n_valid = int(n * config.split[1])
    train, valid, test = (
        samples[:n_train],
        samples[n_train : n_train + n_valid],
        samples[n_train + n_valid :],
    )
    users = sorted({s.user_id for s in train})
    random.Random(config.seed).shuffle(users)
    n_forget = int(len(users) * config.forget_fraction)
    n_heldout = int(len(users) * config.heldout_fraction)
    forget_users = frozenset(users[:n_forget])
    heldout_users = frozenset(users[n_forget : n_forget + n_heldout])
    return Splits(train, valid, test, forget_users, heldout_users)


def make_splits(dataset: Dataset, config: SampleConfig) -> Splits:
    return split_samples(build_samples(dataset, config), config)


NEGATIVE_POOLS = ("popularity", "co-occurrence")


def with_unrated(
    samples: Sequence[Sample],
    per_sample: float,
    seed: int,
    pool: str = "popularity",
    pool_size: int = 50,
) -> list[Sample]:
    """``samples`` plus about ``per_sample`` negatives for each: the same user, history and time
    with an item that user has not rated anywhere in ``samples`` (targets or histories),
    labelled "No" (rating 0).

    A model trained on rated items alone learns P(like | rated); ranking candidates needs
    P(rated and liked), since an unrated candidate is as much a miss as a disliked one. Where the
    negative comes from decides what the model learns to tell apart:

    - ``popularity``: drawn in proportion to how often the item appears in ``samples``, so the
      negatives are as popular as what a candidate stage proposes;
    - ``co-occurrence``: drawn uniformly from the ``pool_size`` items that a co-occurrence
      candidate stage (the service's, ``X^T X r`` over who rated what in ``samples``) proposes
      for the sample's history, less what the user rated: the very lists a rerank has to
      order, so the model learns to separate what the user goes on to rate from its neighbours.

    Only the train split gets them; validation and test stay rated items, so AUC/GAUC keep
    their meaning."""
    if per_sample < 0:
        raise ValueError(f"per_sample must be >= 0, got {per_sample}")
    if pool not in NEGATIVE_POOLS:
        raise ValueError(f"pool must be one of {', '.join(NEGATIVE_POOLS)}, got {pool!r}")
    if pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, got {pool_size}")
    if per_sample == 0 or not samples:
        return list(samples)
    rated: dict[int, set[int]] = defaultdict(set)
    counts: dict[int, int] = defaultdict(int)
    for s in samples:
        for item in (s.item_id, *(i for i, _ in s.history)):
            if item not in rated[s.user_id]:
                rated[s.user_id].add(item)
                counts[item] += 1
    items = sorted(counts)
    cumulative = list(itertools.accumulate(counts[i] for i in items))
    rng = random.Random(seed)
    n = round(len(samples) * per_sample)
    out = list(samples)
    neighbours = _CoOccurrence(rated, items) if pool == "co-occurrence" else None
    for s in rng.choices(samples, k=n):
        if neighbours is not None:
            # an empty pool (a history of items nobody else rated) falls back to popularity
            candidates = neighbours.top([i for i, _ in s.history], rated[s.user_id], pool_size)
            if candidates:
                item = rng.choice(candidates)
                out.append(Sample(s.user_id, item, 0.0, 0, s.timestamp, s.history))
                continue
        for _ in range(100):  # a user who rated nearly every item could exhaust the draws
            item = rng.choices(items, cum_weights=cumulative)[0]
            if item not in rated[s.user_id]:
                out.append(Sample(s.user_id, item, 0.0, 0, s.timestamp, s.history))
                break
    return out


class _CoOccurrence:
    """The service's co-occurrence candidates (``e2urec.cooccurrence``) over who rated what in
    the samples, so that training needs no database. Lists are cached per history, since a
    user's consecutive samples share most of theirs and the same sample can be drawn twice."""

    def __init__(self, rated: dict[int, set[int]], items: list[int]):
        self._co = CoOccurrence.from_ratings(rated, items)
        self._cache: dict[tuple[int, ...], list[int]] = {}

    def top(self, recent: list[int], exclude: set[int], n: int) -> list[int]:
        key = tuple(sorted(set(recent)))
        if key not in self._cache:
            scores = self._co.scores(key)
            # every item some neighbour rated, best first, ties by item id as the service
            # breaks them; the user's own items are filtered per call, below
            ranked = [] if scores is None else self._co.top(scores, len(self._co.item_ids))
            self._cache[key] = [i for i, _ in ranked]
        out: list[int] = []
        for i in self._cache[key]:
            if i not in exclude:
                out.append(i)
                if len(out) == n:
                    break
        return out
