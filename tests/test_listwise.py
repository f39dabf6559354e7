"""Candidate lists and the listwise loss: the ranking task as training data."""

from __future__ import annotations

import math

import pytest
import torch

from e2urec.backbones import load_backbone
from e2urec.data import Catalog, SampleConfig, SyntheticConfig, generate_synthetic, make_splits
from e2urec.data.lists import candidate_lists
from e2urec.data.samples import Sample
from e2urec.encoding import answer_logits, collate, encode_prompts
from e2urec.listwise import encode_lists, list_answer_logits, list_loss
from e2urec.training import TrainConfig, train_llmrec


def rating(user: int, item: int, t: int, liked: bool, history=()) -> Sample:
    return Sample(user, item, 5.0 if liked else 1.0, int(liked), t, tuple(history))


def timeline() -> list[Sample]:
    """User 1 rates 10, 11 (liked), 12 (disliked), 13 (liked), in that order; users 2-4 rated
    10 and other items, so co-occurrence with 10 proposes 11-16; item 99 only user 1 rates."""
    out = [
        rating(1, 11, 2, True, [(10, 5.0)]),
        rating(1, 12, 3, False, [(10, 5.0), (11, 5.0)]),
        rating(1, 13, 4, True, [(10, 5.0), (11, 5.0), (12, 1.0)]),
        rating(1, 99, 5, True, [(10, 5.0), (11, 5.0), (12, 1.0), (13, 5.0)]),
    ]
    for user, items in {2: [11, 12, 13, 14], 3: [11, 13, 15], 4: [12, 16]}.items():
        out += [rating(user, i, 1, True, [(10, 4.0)]) for i in items]
    return out


def test_a_list_holds_what_the_stage_proposes_and_marks_what_the_user_liked_later():
    samples = timeline()
    first = samples[0]  # user 1 at t=2, history [10]: 11, 13 and 99 are liked from then on
    lists = [x for x in candidate_lists([first, *samples[1:]], 40, seed=0) if x.timestamp == 2]
    assert lists, "a sample with liked items ahead of it gives lists"
    lst = lists[0]
    assert lst.user_id == 1 and lst.history == ((10, 5.0),)
    # 99 was rated by user 1 alone: only the user's own row would propose it, and it is left out
    assert set(lst.items) == {11, 12, 13, 14, 15, 16}
    liked = {i for i, p in zip(lst.items, lst.positive, strict=True) if p}
    assert liked == {11, 13}  # 12 was rated but disliked: a negative
    assert list(lst.stage_scores) == sorted(lst.stage_scores, reverse=True)
    assert all(v > 0 for v in lst.stage_scores)
    later = [x for x in candidate_lists(samples, 40, seed=0) if x.timestamp == 4]
    # at t=4 the user has rated 10, 11 and 12: none of them is a candidate any more
    assert later and all(set(x.items) == {13, 14, 15, 16} for x in later)


def test_validation_lists_are_drawn_from_their_period_with_the_train_period_behind_them():
    samples = timeline()
    train, later = samples[:2] + samples[4:], samples[2:4]  # user 1's t=4 and t=5 come later
    lists = candidate_lists(train + later, 5, seed=0, draw_from=later)
    assert lists and {x.timestamp for x in lists} <= {4, 5}
    # what the user rated in the train period is seen, not a candidate
    assert all(not {10, 11, 12} & set(x.items) for x in lists)
    assert candidate_lists(train + later, 1.0, seed=0, draw_from=[]) == []


def test_lists_cap_positives_at_half_and_refuse_bad_sizes():
    samples = timeline()
    for lst in candidate_lists(samples, 20, seed=1, list_size=2):
        assert len(lst.items) == 2 and sum(lst.positive) == 1
    assert candidate_lists(samples, 0.0, seed=0) == []
    with pytest.raises(ValueError, match="per_sample must be >= 0"):
        candidate_lists(samples, -1.0, seed=0)
    with pytest.raises(ValueError, match="list_size must be at least 2"):
        candidate_lists(samples, 1.0, seed=0, list_size=1)
    with pytest.raises(ValueError, match="list_size"):
        TrainConfig(lists=1.0, list_size=1)
    with pytest.raises(ValueError, match="lists and list_weight must be >= 0"):
        TrainConfig(lists=-1.0)
    with pytest.raises(ValueError, match="needs lists > 0"):
        TrainConfig(early_stop_on="lists")


def test_the_stage_alone_scores_a_list_by_its_own_order():
    from e2urec.listwise import EncodedList, stage_only_loss

    def encoded(stage: list[float], positive: list[bool]) -> EncodedList:
        return EncodedList(
            [], [[0]] * len(stage), torch.log(torch.tensor(stage)), torch.tensor(positive)
        )

    flat = encoded([1.0, 1.0, 1.0, 1.0], [True, False, False, False])
    assert stage_only_loss([flat]) == pytest.approx(math.log(4))
    first = encoded([3.0, 1.0], [True, False])  # the stage puts the positive first: below log 2
    last = encoded([3.0, 1.0], [False, True])
    assert stage_only_loss([first]) == pytest.approx(-math.log(3 / 4))
    assert stage_only_loss([first, last]) == pytest.approx((-math.log(3 / 4) - math.log(1 / 4)) / 2)


@pytest.fixture(scope="module")
def small():
    ds = generate_synthetic(SyntheticConfig(users=60, items=80, ratings_per_user=25, seed=3))
    splits = make_splits(ds, SampleConfig(max_samples=None))
    catalog = Catalog.of(ds)
    corpus = catalog.texts() + [catalog.prompt(s).text for s in splits.train]
    return catalog, splits, corpus


def test_the_shared_prefix_gives_each_candidate_its_full_prompt_logits_with_gradients(small):
    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    fmt, model = backbone.format, backbone.model
    lists = candidate_lists(splits.train, 0.05, seed=0, list_size=6)[:3]
    assert len(lists) == 3
    encoded = encode_lists(backbone.tokenizer, fmt, catalog, lists)
    model.eval()  # no dropout: the two ways must agree exactly
    shared = list_answer_logits(model, fmt, encoded, backbone.device)
    prompts = [catalog.prompt_for(x.user_id, x.history, i) for x in lists for i in x.items]
    batch = collate(fmt, encode_prompts(backbone.tokenizer, fmt, prompts))
    full = answer_logits(model, batch)
    cols = [fmt.yes_token, fmt.no_token]
    torch.testing.assert_close(shared[:, cols], full[:, cols], atol=2e-4, rtol=1e-4)
    list_loss(shared, fmt, encoded).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_training_on_lists_lowers_the_listwise_loss(small):
    catalog, splits, corpus = small
    train = splits.train[:300]  # the loss's fall is the point, not the model (120 s on all)
    lists = candidate_lists(train, 0.3, seed=0)

    def loss_of(backbone) -> float:
        encoded = encode_lists(backbone.tokenizer, backbone.format, catalog, lists)
        with torch.no_grad():
            logits = list_answer_logits(backbone.model, backbone.format, encoded, backbone.device)
            return list_loss(logits, backbone.format, encoded).item()

    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    backbone.model.eval()
    before = loss_of(backbone)
    # a high rate and weight so that three short epochs move it (at lr 1e-3 it hardly does)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, lists=0.3, list_weight=8.0)
    result = train_llmrec(backbone, catalog, train, [], cfg, progress=False)
    after = loss_of(backbone)
    assert result.lists == len(lists) > 0
    assert after < before - 0.1, (before, after)


def test_early_stopping_on_lists_judges_the_validation_periods_lists(small):
    catalog, splits, corpus = small
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    cfg = TrainConfig(epochs=2, batch_size=64, lists=0.3, early_stop_on="lists", patience=5)
    result = train_llmrec(
        backbone, catalog, splits.train[:150], splits.valid[:150], cfg, progress=False
    )
    judged = [h["list_loss"] for h in result.history]
    assert len(judged) == 2 and all(0 < x < 10 for x in judged)
    assert result.best_valid["list_loss"] == min(judged)  # the kept weights are the best's
    assert result.best_step == min(result.history, key=lambda h: h["list_loss"])["step"]
    assert 0 < result.stage_list_loss < 10  # the stage's own order, the bar to go below


def test_lists_that_cannot_be_built_fail_before_training(small):
    catalog, splits, corpus = small
    # one disliked rating per user: nothing liked from any sample on, so no list has a positive
    one_each = list({s.user_id: s for s in splits.train if not s.label}.values())
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    weights = [p.detach().clone() for p in backbone.model.parameters()]
    with pytest.raises(ValueError, match="no candidate list holds a positive"):
        train_llmrec(backbone, catalog, one_each, [], TrainConfig(lists=1.0), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, backbone.model.parameters(), strict=True))


def test_validation_lists_ignore_the_unrated_negatives_training_adds(small):
    from e2urec.listwise import stage_only_loss

    catalog, splits, corpus = small
    train, valid = splits.train[:150], splits.valid[:150]
    backbone = load_backbone("tiny", corpus=corpus, device="cpu")
    cfg = TrainConfig(epochs=1, batch_size=64, lists=0.3, negatives=1.0)
    result = train_llmrec(backbone, catalog, train, valid, cfg, progress=False)
    # the stage behind the validation lists counts ratings only: a drawn negative is no rating
    drawn = candidate_lists([*train, *valid], 1.0, seed=0, draw_from=valid)
    expected = encode_lists(
        backbone.tokenizer, backbone.format, catalog, drawn[: max(result.lists // 4, 50)]
    )
    assert result.stage_list_loss == pytest.approx(stage_only_loss(expected))
