"""The database's clock, for anything several machines compare (leases).

Each worker's own clock can drift; a lease written by one worker and judged by another must use
one clock. PostgreSQL's ``now()`` is that clock (the transaction's start, in UTC). SQLite is a
file on this machine, so its clock is this machine's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db.models import utcnow


def db_now(session: Session) -> datetime:
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    value = session.scalar(select(func.now()))
    return value.astimezone(UTC)
