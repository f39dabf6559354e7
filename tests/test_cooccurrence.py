"""The co-occurrence scores that serving's candidate stage and training's hard negatives share."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from e2urec.cooccurrence import CoOccurrence


def _index() -> CoOccurrence:
    # users 0-3 over items 10, 20, 30, 40, 50
    rated = {0: {10, 20, 30}, 1: {10, 40}, 2: {20, 50}, 3: {10, 30, 50}}
    return CoOccurrence.from_ratings(rated, [50, 40, 30, 20, 10])


def test_scores_are_x_transpose_weighted_x_r():
    co = _index()
    assert list(co.item_ids) == [10, 20, 30, 40, 50]
    # recent = {10}: users 0, 1, 3 share one item each; they vote for what they rated
    np.testing.assert_allclose(co.scores([10]), [3, 1, 2, 1, 1])
    # user 3 forgotten (weight 0): their votes are gone, nothing else changes
    np.testing.assert_allclose(co.scores([10], np.array([1, 1, 1, 0], np.float32)), [2, 1, 1, 1, 0])
    np.testing.assert_allclose(co.popularity(), [3, 2, 2, 1, 2])
    assert co.scores([999]) is None  # no known recent item: no co-occurrence list


def test_top_breaks_ties_by_item_id_even_at_the_cut():
    co = _index()
    scores = co.scores([10])  # 10: 3, 30: 2, then 20, 40, 50 tied at 1
    assert co.top(scores, 3) == [(10, 3.0), (30, 2.0), (20, 1.0)]
    assert co.top(scores, 4, exclude={10, 20}) == [(30, 2.0), (40, 1.0), (50, 1.0)]
    # many ties across the cut: always the lowest ids, whatever argpartition picked
    flat = CoOccurrence(sparse.csr_matrix(np.ones((1, 200), np.float32)), np.arange(200) + 1000)
    tied = flat.top(flat.popularity(), 7)
    assert [i for i, _ in tied] == list(range(1000, 1007))
    # only positive scores are candidates
    assert co.top(np.zeros(5), 3) == []


def test_counts_become_rated_once_without_touching_the_callers_matrix():
    given = sparse.csr_matrix(np.array([[2.0, 0.0], [1.0, 3.0]], np.float32))
    co = CoOccurrence(given, np.array([7, 8]))
    np.testing.assert_allclose(co.popularity(), [2, 1])
    np.testing.assert_allclose(given.toarray(), [[2, 0], [1, 3]])


def test_a_matrix_and_ids_that_disagree_are_refused():
    with pytest.raises(ValueError, match="3 item columns for 2 item ids"):
        CoOccurrence(sparse.csr_matrix(np.ones((2, 3))), np.array([1, 2]))
