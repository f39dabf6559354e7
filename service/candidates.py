"""Candidate generation, the cheap first stage: item co-occurrence and popularity.

The index is a user x item matrix ``X`` of who rated what, and a weight per user (1, or 0 once
the user asked to be forgotten). Co-occurrence scores for a user's recent items ``r`` are
``X^T (w * (X r))``, popularity is ``X^T w``: zeroing a weight removes that user from every
candidate list at once, with no rebuild and without reading their data again. Before each use
the index applies the forget requests accepted since it last looked (a watermark on their ids),
so the candidate stage forgets from the moment a request is accepted, in every process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import ForgetRequest, Interaction, Item, User


@dataclass(frozen=True)
class Candidate:
    item_id: int
    source: str  # "co-occurrence" or "popularity"
    score: float


class CandidateIndex:
    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        matrix: sparse.csr_matrix,
        watermark: int,
        external_ids: list[str],
    ):
        self._user_row = {int(u): k for k, u in enumerate(user_ids)}
        self._item_ids = item_ids
        self._item_col = {int(i): k for k, i in enumerate(item_ids)}
        self._x = matrix.tocsr().astype(np.float32)
        self._xt = self._x.T.tocsr()
        self._w = np.ones(len(user_ids), dtype=np.float32)
        self._external_ids = external_ids  # to map hashes of users deleted since the build
        self._by_hash: dict[str, int] | None = None
        self.watermark = watermark
        self._lock = threading.Lock()

    @classmethod
    def build(cls, session: Session) -> CandidateIndex:
        """From the interactions of every user not quarantined, read in one transaction together
        with the watermark, so no forget request can fall between the two."""
        watermark = session.scalar(select(func.coalesce(func.max(ForgetRequest.id), 0)))
        users = session.execute(
            select(User.id, User.external_id).where(User.quarantined_at.is_(None)).order_by(User.id)
        ).all()
        rows = session.execute(
            select(Interaction.user_id, Interaction.item_id)
            .join(User, User.id == Interaction.user_id)
            .where(User.quarantined_at.is_(None))
        ).all()
        item_ids = np.array(
            session.scalars(select(Item.id).order_by(Item.id)).all(), dtype=np.int64
        )
        user_ids = np.array([u for u, _ in users], dtype=np.int64)
        user_row = {int(u): k for k, u in enumerate(user_ids)}
        item_col = {int(i): k for k, i in enumerate(item_ids)}
        if rows:
            r = np.fromiter((user_row[u] for u, _ in rows), dtype=np.int64, count=len(rows))
            c = np.fromiter((item_col[i] for _, i in rows), dtype=np.int64, count=len(rows))
        else:
            r = c = np.zeros(0, dtype=np.int64)
        x = sparse.csr_matrix(
            (np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(user_ids), len(item_ids))
        )
        x.data[:] = 1.0  # rated twice is still rated once
        return cls(user_ids, item_ids, x, int(watermark), [e for _, e in users])

    # -- forgetting ---------------------------------------------------------------------------
    def sync(self, session: Session, hash_of: Callable[[str], str]) -> int:
        """Zero the weight of every user with a forget request newer than the watermark; returns
        how many were applied. Cheap when nothing changed: one indexed query."""
        new = session.execute(
            select(ForgetRequest.id, ForgetRequest.user_id, ForgetRequest.user_hash)
            .where(ForgetRequest.id > self.watermark)
            .order_by(ForgetRequest.id)
        ).all()
        if not new:
            return 0
        with self._lock:
            for request_id, user_id, digest in new:
                row = self._user_row.get(user_id) if user_id is not None else None
                if row is None and user_id is None:
                    # already deleted since the build: find the user by the kept hash
                    row = self._hashes(hash_of).get(digest)
                if row is not None:
                    self._w[row] = 0.0
                self.watermark = max(self.watermark, request_id)
        return len(new)

    def _hashes(self, hash_of: Callable[[str], str]) -> dict[str, int]:
        if self._by_hash is None:
            self._by_hash = {hash_of(e): k for k, e in enumerate(self._external_ids)}
        return self._by_hash

    def excluded(self, user_id: int) -> bool:
        row = self._user_row.get(user_id)
        return row is None or self._w[row] == 0.0

    # -- candidates ----------------------------------------------------------------------------
    def popular(self, n: int, exclude: Iterable[int] = ()) -> list[Candidate]:
        with self._lock:
            counts = self._xt @ self._w
        return self._top(counts, n, set(exclude), "popularity")

    def popularity(self, item_ids: list[int]) -> list[float]:
        """How many (not forgotten) users rated each item."""
        with self._lock:
            counts = self._xt @ self._w
        return [float(counts[self._item_col[i]]) if i in self._item_col else 0.0 for i in item_ids]

    def for_user(self, recent: list[int], seen: set[int], n: int) -> list[Candidate]:
        """Items that users who rated the user's recent items also rated, minus what the user
        has seen; topped up with popular items when co-occurrence finds too few."""
        cols = [self._item_col[i] for i in recent if i in self._item_col]
        with self._lock:
            found: list[Candidate] = []
            if cols:
                r = np.zeros(len(self._item_ids), dtype=np.float32)
                r[cols] = 1.0
                overlap = (self._x @ r) * self._w  # per user: how many recent items they share
                found = self._top(self._xt @ overlap, n, seen, "co-occurrence")
            if len(found) < n:
                taken = seen | {c.item_id for c in found}
                found += self._top(self._xt @ self._w, n - len(found), taken, "popularity")
        return found

    def _top(self, scores: np.ndarray, n: int, exclude: set[int], source: str) -> list[Candidate]:
        scores = np.asarray(scores, dtype=np.float64).copy()
        if exclude:
            cols = [self._item_col[i] for i in exclude if i in self._item_col]
            scores[cols] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()), int((scores > 0).sum()))
        if n <= 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.lexsort((self._item_ids[top], -scores[top]))]  # ties by item id: stable
        return [Candidate(int(self._item_ids[k]), source, float(scores[k])) for k in top]
