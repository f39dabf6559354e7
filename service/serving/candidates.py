"""Candidate generation, the cheap first stage: item co-occurrence and popularity.

The index is a user x item matrix ``X`` of who rated what, and a weight per user (1, or 0 once
the user asked to be forgotten). Co-occurrence scores for a user's recent items ``r`` are
``X^T (w * (X r))``, popularity is ``X^T w`` (``e2urec.cooccurrence``, which training's hard
negatives share): zeroing a weight removes that user from every candidate list at once, with no
rebuild and without reading their data again. Before each use
the index applies the forget requests accepted since it last looked, so the candidate stage
forgets from the moment a request is accepted, in every process.

Request ids come from a sequence, and sequence values are not in commit order: a request with a
lower id can commit after one with a higher id. So the index keeps a *floor* (every id at or
below it is applied) and re-reads everything above it, skipping what it already applied; an id
missing below the highest one applied is a transaction still open (it will show up) or one
that rolled back (it never will: after ``GAP_GRACE_S`` the floor passes it; the periodic
rebuild, which reads the users' quarantine flags, covers even that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from e2urec.cooccurrence import CoOccurrence
from service.core.db.models import ForgetRequest, Interaction, Item, User

GAP_GRACE_S = 600.0  # far longer than any forget request's transaction


@dataclass(frozen=True)
class Candidate:
    item_id: int
    source: str  # "co-occurrence" or "popularity"
    score: float

    @property
    def tier(self) -> int:
        """0 for co-occurrence, 1 for a popularity top-up: their scores are on different
        scales, and a count is no evidence the user would rate the item (blended ranking keeps
        the top-ups after the rest)."""
        return 0 if self.source == "co-occurrence" else 1


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
        self._co = CoOccurrence(matrix, item_ids)
        self._w = np.ones(len(user_ids), dtype=np.float32)
        self._external_ids = external_ids  # to map hashes of users deleted since the build
        self._by_hash: dict[str, int] | None = None
        self.watermark = watermark  # the highest request id applied
        self._floor = watermark  # every request id <= floor is applied (or a rollback's gap)
        self._applied: set[int] = set()  # applied ids above the floor
        self._gaps: dict[int, float] = {}  # missing ids above the floor -> when first missed
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
        return cls(user_ids, item_ids, x, int(watermark), [e for _, e in users])

    # -- forgetting ---------------------------------------------------------------------------
    def sync(self, session: Session, hash_of: Callable[[str], str]) -> int:
        """Zero the weight of every user with a forget request not applied yet; returns how many
        were applied. Cheap when nothing changed: one indexed query above the floor."""
        rows = session.execute(
            select(ForgetRequest.id, ForgetRequest.user_id, ForgetRequest.user_hash)
            .where(ForgetRequest.id > self._floor)
            .order_by(ForgetRequest.id)
        ).all()
        with self._lock:
            new = [r for r in rows if r[0] not in self._applied and r[0] > self._floor]
            for request_id, user_id, digest in new:
                row = self._user_row.get(user_id) if user_id is not None else None
                if row is None and user_id is None:
                    # already deleted since the build: find the user by the kept hash
                    row = self._hashes(hash_of).get(digest)
                if row is not None:
                    self._w[row] = 0.0
                self._applied.add(request_id)
                self.watermark = max(self.watermark, request_id)
            self._advance_floor()
        return len(new)

    def _advance_floor(self) -> None:
        now = time.monotonic()
        for missing in range(self._floor + 1, self.watermark):
            if missing not in self._applied:
                self._gaps.setdefault(missing, now)
        while self._floor < self.watermark:
            nxt = self._floor + 1
            if nxt in self._applied:
                self._applied.discard(nxt)
            elif now - self._gaps.get(nxt, now) < GAP_GRACE_S:
                break  # possibly a transaction still open: keep reading from here
            self._gaps.pop(nxt, None)
            self._floor = nxt

    @property
    def open_gaps(self) -> int:
        """Request ids below the highest applied that have not shown up (yet)."""
        return len(self._gaps)

    def _hashes(self, hash_of: Callable[[str], str]) -> dict[str, int]:
        if self._by_hash is None:
            self._by_hash = {hash_of(e): k for k, e in enumerate(self._external_ids)}
        return self._by_hash

    # -- candidates ----------------------------------------------------------------------------
    def popular(self, n: int) -> list[Candidate]:
        with self._lock:
            counts = self._co.popularity(self._w)
        return self._top(counts, n, set(), "popularity")

    def popularity(self, item_ids: list[int]) -> list[float]:
        """How many (not forgotten) users rated each item."""
        with self._lock:
            counts = self._co.popularity(self._w)
        col = self._co.column
        return [float(counts[col[i]]) if i in col else 0.0 for i in item_ids]

    def for_user(self, recent: list[int], seen: set[int], n: int) -> list[Candidate]:
        """Items that users who rated the user's recent items also rated, minus what the user
        has seen; topped up with popular items when co-occurrence finds too few."""
        with self._lock:
            found: list[Candidate] = []
            scores = self._co.scores(recent, self._w)
            if scores is not None:
                found = self._top(scores, n, seen, "co-occurrence")
            if len(found) < n:
                taken = seen | {c.item_id for c in found}
                found += self._top(
                    self._co.popularity(self._w), n - len(found), taken, "popularity"
                )
        return found

    def _top(self, scores: np.ndarray, n: int, exclude: set[int], source: str) -> list[Candidate]:
        return [Candidate(i, source, score) for i, score in self._co.top(scores, n, exclude)]
