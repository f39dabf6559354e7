"""Forget requests: accepting them idempotently, and every status change with its audit row."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.db.models import (
    OPEN_STATUSES,
    ForgetRequest,
    RequestStatus,
    User,
    utcnow,
)
from service.core.security import user_hash
from service.domain import audit

# Which status may follow which; anything else is a bug and raises.
TRANSITIONS: dict[RequestStatus, set[RequestStatus]] = {
    RequestStatus.pending: {RequestStatus.scheduled},
    RequestStatus.scheduled: {RequestStatus.running, RequestStatus.pending, RequestStatus.failed},
    RequestStatus.running: {RequestStatus.completed, RequestStatus.failed, RequestStatus.pending},
    RequestStatus.failed: {RequestStatus.scheduled, RequestStatus.pending},
    RequestStatus.completed: set(),
}
_TIME_FIELD = {
    RequestStatus.scheduled: "scheduled_at",
    RequestStatus.running: "started_at",
    RequestStatus.completed: "completed_at",
    RequestStatus.failed: "failed_at",
}


class UnknownUser(LookupError):
    pass


def open_request(session: Session, user_id: int) -> ForgetRequest | None:
    return session.scalars(
        select(ForgetRequest).where(
            ForgetRequest.user_id == user_id, ForgetRequest.status.in_(OPEN_STATUSES)
        )
    ).first()


def _completed(session: Session, digest: str) -> ForgetRequest | None:
    return session.scalars(
        select(ForgetRequest)
        .where(ForgetRequest.user_hash == digest, ForgetRequest.status == RequestStatus.completed)
        .order_by(ForgetRequest.id.desc())
    ).first()


def request_forget(
    session: Session, external_id: str, *, salt: bytes, actor: str
) -> tuple[ForgetRequest, bool]:
    """The user's open request, or a new pending one (the user quarantined in the same
    transaction). Returns (request, created). Concurrent duplicates meet the partial unique
    index on open requests; the loser returns the winner's request."""
    digest = user_hash(salt, external_id)
    user = session.scalars(select(User).where(User.external_id == external_id)).first()
    if user is None:
        done = _completed(session, digest)
        if done is not None:  # already forgotten: the answer to a repeat is that request
            return done, False
        raise UnknownUser(external_id)
    user_id = user.id  # kept: a failed savepoint below expires the row (it may be gone)
    existing = open_request(session, user_id)
    if existing is not None:
        return existing, False
    now = utcnow()
    request = ForgetRequest(
        request_id=str(uuid.uuid4()),
        user_id=user.id,
        user_hash=digest,
        status=RequestStatus.pending,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(request)
            user.quarantined_at = user.quarantined_at or now
            session.flush()
    except IntegrityError:
        # A concurrent duplicate won the open-request index, or the user's request completed
        # (and the user row was deleted) between our read and our insert.
        winner = open_request(session, user_id) or _completed(session, digest)
        if winner is None:  # neither: let the caller see the real error
            raise
        return winner, False
    audit.record(
        session,
        actor=actor,
        entity="forget_request",
        entity_id=request.request_id,
        action="accepted",
        to_status=RequestStatus.pending,
    )
    return request, True


def transition(
    session: Session,
    request: ForgetRequest,
    to: RequestStatus,
    *,
    actor: str,
    at: datetime | None = None,
    **detail,
) -> None:
    """Move a request to ``to`` (checked against TRANSITIONS), stamping its time, with an
    audit row in the same transaction."""
    current = RequestStatus(request.status)
    if to not in TRANSITIONS[current]:
        raise ValueError(f"forget request {request.request_id}: {current} -> {to} is not allowed")
    now = at or utcnow()
    request.status = to
    request.updated_at = now
    if to in _TIME_FIELD:
        setattr(request, _TIME_FIELD[to], now)
    audit.record(
        session,
        actor=actor,
        entity="forget_request",
        entity_id=request.request_id,
        action="status",
        from_status=current,
        to_status=to,
        **detail,
    )
