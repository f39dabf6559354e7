"""The candidate index against PostgreSQL: forget requests reach it in commit order, whatever
order their ids are in."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service.core.db.models import Interaction, Item, User
from service.core.db.session import session_factory, session_scope
from service.core.security import user_hash
from service.domain.forget import request_forget
from service.serving.candidates import CandidateIndex
from tests.service_support import postgres_database, prepare_database, small_dataset

SALT = b"salt"


@pytest.fixture
def db():
    with postgres_database() as url:
        prepare_database(url, small_dataset(users=20, items=30, per_user=8), None)
        yield url


def _hash(external_id: str) -> str:
    return user_hash(SALT, external_id)


def _popularity_without(url: str, forgotten: set[str]) -> tuple[list[int], list[float]]:
    """Every item, and how many users rated it, leaving out the forgotten ones: what the index's
    popularity must read once it applied exactly those users' requests."""
    with session_scope(url, write=False) as s:
        items = list(s.scalars(select(Item.id).order_by(Item.id)))
        raters = s.execute(
            select(Interaction.item_id, func.count(func.distinct(Interaction.user_id)))
            .join(User, User.id == Interaction.user_id)
            .where(User.external_id.not_in(forgotten))
            .group_by(Interaction.item_id)
        ).all()
    counts = dict(raters)
    return items, [float(counts.get(i, 0)) for i in items]


def _applied(index: CandidateIndex, url: str, forgotten: set[str]) -> bool:
    items, expected = _popularity_without(url, forgotten)
    return index.popularity(items) == expected


def test_a_request_that_commits_after_a_higher_id_is_still_applied(db):
    with session_scope(db, write=False) as s:
        index = CandidateIndex.build(s)
    make = session_factory(db, write=True)
    first, second = make(), make()
    try:
        slow, _ = request_forget(first, "3", salt=SALT, actor="test")
        first.flush()  # takes the lower id, not committed yet
        fast, _ = request_forget(second, "4", salt=SALT, actor="test")
        second.flush()
        assert slow.id < fast.id
        second.commit()  # the higher id commits first
        with session_scope(db, write=False) as s:
            assert index.sync(s, _hash) == 1
        assert _applied(index, db, {"4"})  # "3" still counts
        assert index.open_gaps == 1  # the lower id has not shown up yet
        first.commit()
        with session_scope(db, write=False) as s:
            assert index.sync(s, _hash) == 1  # a watermark on ids would skip it forever
        assert _applied(index, db, {"3", "4"})
        assert index.open_gaps == 0
        with session_scope(db, write=False) as s:
            assert index.sync(s, _hash) == 0  # nothing applied twice
    finally:
        first.close()
        second.close()


def test_a_rolled_back_id_stops_being_waited_for_after_the_grace(db, monkeypatch):
    import service.serving.candidates as candidates

    with session_scope(db, write=False) as s:
        index = CandidateIndex.build(s)
    make = session_factory(db, write=True)
    aborted = make()
    request_forget(aborted, "5", salt=SALT, actor="test")
    aborted.flush()
    aborted.rollback()  # its id is gone for good
    aborted.close()
    with session_scope(db) as s:
        request_forget(s, "6", salt=SALT, actor="test")
    with session_scope(db, write=False) as s:
        index.sync(s, _hash)
    assert index.open_gaps == 1
    monkeypatch.setattr(candidates, "GAP_GRACE_S", 0.0)
    with session_scope(db, write=False) as s:
        index.sync(s, _hash)
    assert index.open_gaps == 0 and _applied(index, db, {"6"})  # "5" rolled back: still counts
