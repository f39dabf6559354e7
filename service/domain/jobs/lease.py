"""Running a job under a lease: claiming the oldest runnable job, renewing and holding the
lease (times from the database's clock), and failing a job."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.db.clock import db_now
from service.core.db.models import (
    JobStatus,
    RequestStatus,
    UnlearningJob,
    utcnow,
)
from service.domain.forget import transition
from service.domain.jobs.queue import job_audit, lock_queue


class LeaseLost(RuntimeError):
    """Another worker owns this job now (ours expired): stop without writing anything."""


# -- running ------------------------------------------------------------------------------------


def claim_next_job(
    session: Session,
    owner: str,
    *,
    lease_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
) -> UnlearningJob | None:
    """Take the oldest runnable job under a lease, unless one is running under a live lease.
    A job whose lease expired (its worker died) is taken over; after ``max_attempts`` it fails.
    Lease times are the database's clock, not this worker's."""
    lock_queue(session)
    now = now or db_now(session)
    busy = session.scalars(
        select(UnlearningJob).where(
            UnlearningJob.status == JobStatus.running, UnlearningJob.lease_expires_at > now
        )
    ).first()
    if busy is not None:
        return None
    candidates = session.scalars(
        select(UnlearningJob)
        .where(UnlearningJob.status.in_([JobStatus.queued, JobStatus.running]))
        .order_by(UnlearningJob.id)
    ).all()
    for job in candidates:
        if job.attempts >= max_attempts:
            fail_job(
                session,
                job,
                f"gave up after {job.attempts} attempts (the worker died or lost its lease)",
                actor=owner,
            )
            continue
        previous = job.lease_owner
        job.status = JobStatus.running
        job.lease_owner = owner
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        job.heartbeat_at = now
        job.attempts += 1
        job.started_at = job.started_at or now
        job.stage, job.step, job.total_steps, job.loss = "claimed", 0, 0, None
        for request in job.requests:
            if request.status == RequestStatus.scheduled:
                transition(session, request, RequestStatus.running, actor=owner, job=job.id)
        job_audit(
            session,
            job,
            owner,
            "claimed",
            to_status=JobStatus.running,
            attempt=job.attempts,
            took_over_from=previous,
        )
        return job
    return None


def renew_lease(
    session: Session,
    job_id: int,
    owner: str,
    lease_seconds: float,
    *,
    stage: str | None = None,
    step: int | None = None,
    total: int | None = None,
    loss: float | None = None,
) -> bool:
    """Extend the lease (and record progress); False if the job is no longer ours."""
    now = db_now(session)
    values: dict = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "heartbeat_at": now}
    if stage is not None:
        values |= {"stage": stage, "step": step or 0, "total_steps": total or 0, "loss": loss}
    result = session.execute(
        update(UnlearningJob)
        .where(
            UnlearningJob.id == job_id,
            UnlearningJob.lease_owner == owner,
            UnlearningJob.status == JobStatus.running,
        )
        .values(**values)
    )
    return result.rowcount == 1


def hold_lease(session: Session, job_id: int, owner: str) -> UnlearningJob:
    """The job, locked for this transaction, if this worker still owns it."""
    job = session.scalars(
        select(UnlearningJob).where(UnlearningJob.id == job_id).with_for_update()
    ).one()
    if job.lease_owner != owner or job.status != JobStatus.running:
        raise LeaseLost(f"job {job_id} is no longer owned by {owner} (now {job.lease_owner})")
    return job


def fail_job(session: Session, job: UnlearningJob, error: str, *, actor: str, metrics=None) -> None:
    """The job failed (an error, or the quality gate): its requests stay open (failed, still
    quarantined) for a retry; the active adapter keeps serving."""
    previous = job.status
    job.status = JobStatus.failed
    job.finished_at = utcnow()
    job.error = error
    job.lease_owner = None
    job.lease_expires_at = None
    if metrics is not None:
        job.metrics = metrics
    for request in job.requests:
        if request.status in (RequestStatus.scheduled, RequestStatus.running):
            request.error = error
            transition(session, request, RequestStatus.failed, actor=actor, job=job.id)
    job_audit(
        session, job, actor, "failed", from_status=previous, to_status=JobStatus.failed, error=error
    )
