"""Item co-occurrence over who rated what: the scores behind the service's candidate stage
(``service.serving.candidates``) and the library's hard negatives (``with_unrated``), in one
place so that training draws from the very lists serving proposes.

``X`` is a binary user x item matrix. For a user's recent items ``r`` the co-occurrence score
of every item is ``X^T (w * (X r))``: each user who rated some of ``r`` votes for everything
else they rated, weighted by how many of ``r`` they share and by ``w`` (1, or 0 for a user
who asked to be forgotten). Popularity is ``X^T w``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import sparse


class CoOccurrence:
    """Scores over a fixed user x item matrix. Read-only after construction, so one instance can
    be shared by threads; the caller owns the user weights and any locking around them."""

    def __init__(self, matrix: sparse.spmatrix, item_ids: np.ndarray):
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        if matrix.shape[1] != len(self.item_ids):
            raise ValueError(
                f"the matrix has {matrix.shape[1]} item columns for {len(self.item_ids)} item ids"
            )
        self.column = {int(i): k for k, i in enumerate(self.item_ids)}
        x = sparse.csr_matrix(matrix, dtype=np.float32, copy=True)  # the caller's stays as given
        x.data[:] = 1.0  # rated twice is still rated once
        self._x, self._xt = x, x.T.tocsr()

    @classmethod
    def from_ratings(cls, rated: dict[int, Iterable[int]], item_ids: Iterable[int]) -> CoOccurrence:
        """From each user's rated items (users in sorted order are the rows)."""
        items = np.asarray(sorted(set(item_ids)), dtype=np.int64)
        col = {int(i): k for k, i in enumerate(items)}
        rows: list[int] = []
        cols: list[int] = []
        for r, user in enumerate(sorted(rated)):
            user_cols = {col[i] for i in rated[user]}
            rows += [r] * len(user_cols)
            cols += sorted(user_cols)
        x = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(rated), len(items))
        )
        return cls(x, items)

    @property
    def users(self) -> int:
        return self._x.shape[0]

    def scores(self, recent: Iterable[int], weights: np.ndarray | None = None) -> np.ndarray | None:
        """Every item's co-occurrence score for ``recent`` (item ids; unknown ones are ignored),
        or None when none of them is known."""
        cols = sorted({self.column[i] for i in recent if i in self.column})
        if not cols:
            return None
        r = np.zeros(len(self.item_ids), dtype=np.float32)
        r[cols] = 1.0
        overlap = self._x @ r  # per user: how many of the recent items they rated
        if weights is not None:
            overlap = overlap * weights
        return np.asarray(self._xt @ overlap).ravel()

    def popularity(self, weights: np.ndarray | None = None) -> np.ndarray:
        """How many (weighted) users rated each item."""
        w = np.ones(self.users, dtype=np.float32) if weights is None else weights
        return np.asarray(self._xt @ w).ravel()

    def top(
        self, scores: np.ndarray, n: int, exclude: Iterable[int] = ()
    ) -> list[tuple[int, float]]:
        """(item id, score) of the ``n`` best items with a positive score, less ``exclude`` (item
        ids), best first. Ties go to the lower item id, also at the cut: which of several equal
        scores make the list does not depend on the partition's internals."""
        scores = np.asarray(scores, dtype=np.float64).copy()
        cols = [self.column[i] for i in exclude if i in self.column]
        scores[cols] = -np.inf
        n = min(n, int((scores > 0).sum()))
        if n <= 0:
            return []
        cut = scores[np.argpartition(-scores, n - 1)[n - 1]]  # the n-th best score
        above = np.flatnonzero(scores > cut)
        tied = np.flatnonzero(scores == cut)
        tied = tied[np.argsort(self.item_ids[tied], kind="stable")][: n - len(above)]
        keep = np.concatenate([above, tied])
        keep = keep[np.lexsort((self.item_ids[keep], -scores[keep]))]
        return [(int(self.item_ids[k]), float(scores[k])) for k in keep]
