"""The candidate index against PostgreSQL: forget requests reach it in commit order, whatever
order their ids are in."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.core.db.models import User
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


def _user_id(url: str, external_id: str) -> int:
    with session_scope(url, write=False) as s:
        return s.scalar(select(User.id).where(User.external_id == external_id))


def test_a_request_that_commits_after_a_higher_id_is_still_applied(db):
    with session_scope(db, write=False) as s:
        index = CandidateIndex.build(s)
    early, late = _user_id(db, "3"), _user_id(db, "4")
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
        assert index.excluded(late) and not index.excluded(early)
        assert index.open_gaps == 1  # the lower id has not shown up yet
        first.commit()
        with session_scope(db, write=False) as s:
            assert index.sync(s, _hash) == 1  # a watermark on ids would skip it forever
        assert index.excluded(early)
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
    assert index.open_gaps == 0 and not index.excluded(_user_id(db, "5"))
