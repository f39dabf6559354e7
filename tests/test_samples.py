from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2urec.data import (
    Catalog,
    SampleConfig,
    SyntheticConfig,
    build_samples,
    generate_synthetic,
    load_ml1m,
    load_prepared,
    make_splits,
    save_prepared,
)


@pytest.fixture(scope="module")
def synthetic():
    return generate_synthetic(SyntheticConfig(users=60, items=80, ratings_per_user=20, seed=1))


def test_samples_follow_time_and_carry_the_previous_k_ratings(ml1m_dir: Path):
    ds = load_ml1m(ml1m_dir)
    samples = build_samples(ds, SampleConfig(history_len=2, max_samples=None))
    # chronological: user 2 rates at 978300000 and 978300100, before user 1's first rating
    assert [(s.user_id, s.item_id) for s in samples] == [(2, 1), (1, 3), (1, 2)]
    assert samples[0].history == ((3, 2.0),)
    assert samples[1].history == ((1, 5.0),)  # user 1 rated item 1, then 3 (…968), then 2 (…2109)
    assert samples[2].history == ((1, 5.0), (3, 4.0))
    assert [s.label for s in samples] == [1, 1, 0]  # 4 > 3, 4 > 3, 3 is not > 3


def test_history_is_capped_at_k_and_threshold_is_configurable(synthetic):
    samples = build_samples(
        synthetic, SampleConfig(history_len=3, max_samples=None, like_threshold=4)
    )
    assert max(len(s.history) for s in samples) == 3
    assert all(s.label == int(s.rating > 4) for s in samples)


def test_last_n_samples_and_60_20_20_chronological_split(synthetic):
    cfg = SampleConfig(max_samples=500)
    all_samples = build_samples(synthetic, SampleConfig(max_samples=None))
    splits = make_splits(synthetic, cfg)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (300, 100, 100)
    assert splits.train + splits.valid + splits.test == all_samples[-500:]
    assert max(s.timestamp for s in splits.train) <= min(s.timestamp for s in splits.valid)
    assert max(s.timestamp for s in splits.valid) <= min(s.timestamp for s in splits.test)


def test_forget_set_is_a_seeded_fraction_of_train_users(synthetic):
    splits = make_splits(synthetic, SampleConfig(max_samples=None, seed=42))
    train_users = {s.user_id for s in splits.train}
    assert len(splits.forget_users) == int(0.2 * len(train_users))
    assert splits.forget_users <= train_users
    assert {s.user_id for s in splits.forget} == splits.forget_users
    assert not {s.user_id for s in splits.retain} & splits.forget_users
    assert len(splits.forget) + len(splits.retain) == len(splits.train)
    again = make_splits(synthetic, SampleConfig(max_samples=None, seed=42))
    other = make_splits(synthetic, SampleConfig(max_samples=None, seed=7))
    assert again.forget_users == splits.forget_users and again.train == splits.train
    assert other.forget_users != splits.forget_users


@pytest.mark.parametrize(
    "kwargs",
    [{"history_len": 0}, {"split": (0.5, 0.5, 0.5)}, {"forget_fraction": 1.0}, {"max_samples": 2}],
)
def test_bad_sample_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        SampleConfig(**kwargs)


def test_prepared_folder_round_trips_and_detects_tampering(synthetic, tmp_path: Path):
    cfg = SampleConfig(max_samples=400)
    splits = make_splits(synthetic, cfg)
    saved = save_prepared(
        tmp_path / "prep", Catalog.of(synthetic), splits, cfg, {"format": "synthetic"}
    )
    loaded = load_prepared(tmp_path / "prep")
    assert loaded.splits.train == splits.train and loaded.splits.test == splits.test
    assert loaded.splits.forget_users == splits.forget_users
    assert loaded.catalog.items == synthetic.items and loaded.catalog.users == synthetic.users
    assert loaded.data_hash == saved.data_hash
    # Reproducible: the same seed gives the same hash; another seed another one.
    again = save_prepared(
        tmp_path / "again",
        Catalog.of(synthetic),
        make_splits(synthetic, cfg),
        cfg,
        {"format": "synthetic"},
    )
    assert again.data_hash == saved.data_hash
    cfg7 = SampleConfig(max_samples=400, seed=7)
    other = save_prepared(
        tmp_path / "other",
        Catalog.of(synthetic),
        make_splits(synthetic, cfg7),
        cfg7,
        {"format": "synthetic"},
    )
    assert other.data_hash != saved.data_hash
    with pytest.raises(FileExistsError, match="--force"):
        save_prepared(tmp_path / "prep", Catalog.of(synthetic), splits, cfg, {})
    with (tmp_path / "prep" / "test.jsonl").open("a") as f:
        f.write("[1, 2, 3, 1, 5, []]\n")
    with pytest.raises(ValueError, match="changed since it was prepared"):
        load_prepared(tmp_path / "prep")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.shared_data
def test_ml1m_protocol_on_shared_data(shared_data: Path):
    ds = load_ml1m(shared_data / "ml-1m", "ratings.users_1-2999.partial.dat")
    splits = make_splits(ds, SampleConfig())
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (60_000, 20_000, 20_000)
    assert 0.5 < sum(s.label for s in splits.train) / 60_000 < 0.65
    # most samples carry a full history of 10; a user's first ratings carry fewer
    full = sum(len(s.history) == 10 for s in splits.test) / len(splits.test)
    assert full > 0.9 and max(len(s.history) for s in splits.test) == 10


def test_unrated_negatives_are_popular_items_the_user_never_rated(synthetic):
    from collections import Counter

    from e2urec.data.samples import with_unrated

    train = make_splits(synthetic, SampleConfig(max_samples=None)).train
    out = with_unrated(train, 0.5, seed=3)
    assert out[: len(train)] == train and len(out) == len(train) + round(len(train) * 0.5)
    rated: dict[int, set[int]] = {}
    for s in train:
        rated.setdefault(s.user_id, set()).update([s.item_id, *(i for i, _ in s.history)])
    contexts = {(s.user_id, s.timestamp, s.history) for s in train}
    negatives = out[len(train) :]
    for n in negatives:
        assert (n.label, n.rating) == (0, 0.0)
        assert n.item_id not in rated[n.user_id]
        assert (n.user_id, n.timestamp, n.history) in contexts  # a real sample's context
    # drawn by popularity: the negatives' items are rated more often than the average item
    popularity = Counter(i for items in rated.values() for i in items)
    drawn = np.mean([popularity[n.item_id] for n in negatives])
    assert drawn > 1.1 * np.mean(list(popularity.values()))
    assert with_unrated(train, 0.5, seed=3) == out and with_unrated(train, 0, seed=3) == train
    with pytest.raises(ValueError, match="per_sample"):
        with_unrated(train, -1, seed=3)


def test_co_occurrence_negatives_come_from_the_candidate_stage_lists(synthetic):
    from collections import Counter

    from e2urec.data.samples import with_unrated

    train = make_splits(synthetic, SampleConfig(max_samples=None)).train
    out = with_unrated(train, 0.5, seed=3, pool="co-occurrence", pool_size=20)
    assert out[: len(train)] == train and len(out) == len(train) + round(len(train) * 0.5)
    rated: dict[int, set[int]] = {}
    for s in train:
        rated.setdefault(s.user_id, set()).update([s.item_id, *(i for i, _ in s.history)])
    who_rated: dict[int, set[int]] = {}
    for user, items in rated.items():
        for i in items:
            who_rated.setdefault(i, set()).add(user)

    def top_unrated(history, user, n):  # the service's score: X^T X r, ties by item id
        score: Counter = Counter()
        overlap = Counter(u for i in {i for i, _ in history} for u in who_rated[i])
        for u, shared in overlap.items():
            for i in rated[u]:
                score[i] += shared
        ranked = sorted(score, key=lambda i: (-score[i], i))
        return [i for i in ranked if i not in rated[user]][:n]

    negatives = out[len(train) :]
    for n in negatives[:200]:
        assert (n.label, n.rating) == (0, 0.0) and n.item_id not in rated[n.user_id]
        assert n.item_id in top_unrated(n.history, n.user_id, 20)
    # a different draw from the popularity pool: the lists depend on the history
    assert negatives != with_unrated(train, 0.5, seed=3)[len(train) :]
    assert with_unrated(train, 0.5, seed=3, pool="co-occurrence", pool_size=20) == out
    with pytest.raises(ValueError, match="pool must be one of popularity, co-occurrence"):
        with_unrated(train, 0.5, seed=3, pool="random")
