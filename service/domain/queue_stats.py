"""What the job and queue metrics are computed from, aggregated in SQL: a scrape reads a
handful of rows whatever the size of the history (it used to load every job and request)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.core.db.clock import db_now
from service.core.db.models import OPEN_STATUSES, ForgetRequest, RequestStatus, UnlearningJob

JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
WAIT_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class Histogram:
    count: int
    total: float
    cumulative: list[int]  # observations <= each bucket bound, in bucket order


def _seconds(session: Session, start, end):
    """``end - start`` in seconds, in SQL, on either backend."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _histogram(session: Session, value, where, buckets: tuple) -> Histogram:
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(value), 0.0),
            *[func.coalesce(func.sum(case((value <= b, 1), else_=0)), 0) for b in buckets],
        ).where(*where)
    ).one()
    return Histogram(int(row[0]), float(row[1]), [int(c) for c in row[2:]])


def open_requests(session: Session) -> dict[str, float]:
    rows = session.execute(
        select(ForgetRequest.status, func.count())
        .where(ForgetRequest.status.in_(OPEN_STATUSES))
        .group_by(ForgetRequest.status)
    ).all()
    counts = {s.value: 0.0 for s in OPEN_STATUSES}
    counts.update({str(status): float(n) for status, n in rows})
    return counts


def job_stats(session: Session) -> dict:
    job = UnlearningJob
    by_status = session.execute(
        select(job.kind, job.status, func.count()).group_by(job.kind, job.status)
    ).all()
    duration = _seconds(session, job.started_at, job.finished_at)
    durations = _histogram(
        session,
        duration,
        [
            job.kind == "unlearn",
            job.status == "succeeded",
            job.started_at.is_not(None),
            job.finished_at.is_not(None),
        ],
        JOB_BUCKETS,
    )
    sizes = _histogram(session, job.request_count, [job.kind == "unlearn"], BATCH_BUCKETS)
    wait = _seconds(session, ForgetRequest.created_at, ForgetRequest.completed_at)
    waits = _histogram(session, wait, [ForgetRequest.completed_at.is_not(None)], WAIT_BUCKETS)
    oldest_pending = session.scalar(
        select(func.min(ForgetRequest.created_at)).where(
            ForgetRequest.status == RequestStatus.pending
        )
    )
    oldest_open = session.scalar(
        select(func.min(ForgetRequest.created_at)).where(ForgetRequest.status.in_(OPEN_STATUSES))
    )
    now = db_now(session)
    return {
        "jobs": [(str(k), str(s), int(n)) for k, s, n in by_status],
        "durations": durations,
        "sizes": sizes,
        "waits": waits,
        "oldest_pending": (now - oldest_pending).total_seconds() if oldest_pending else 0.0,
        "oldest_open": (now - oldest_open).total_seconds() if oldest_open else 0.0,
    }
