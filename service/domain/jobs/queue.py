"""Batching forget requests into jobs, retries and deadlines, and which jobs a worker must be
told about. Every function runs in the caller's transaction under one queue lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.core.db.clock import db_now
from service.core.db.models import (
    OPEN_STATUSES,
    AuditEntry,
    BaseModelVersion,
    ForgetRequest,
    Interaction,
    JobKind,
    JobStatus,
    RequestStatus,
    UnlearningJob,
    utcnow,
)
from service.domain import audit
from service.domain.forget import transition

QUEUE_LOCK = 0x6532_7572  # "e2ur": one advisory lock for every queue change


def lock_queue(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": QUEUE_LOCK})


def job_audit(session: Session, job: UnlearningJob, actor: str, action: str, **detail) -> None:
    audit.record(session, actor=actor, entity="job", entity_id=job.id, action=action, **detail)


# -- batching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPolicy:
    size: int  # cut when this many requests are pending
    max_wait_seconds: float  # or when the oldest has waited this long
    max_requests: int  # at most this many in one batch
    # ... but only once the batch holds this many forget samples (the quality gate's power);
    # a batch that cannot reach it within gather_max_seconds goes to a consolidation instead.
    min_forget_samples: int = 0
    gather_max_seconds: float = float("inf")

    @classmethod
    def from_settings(cls, settings) -> BatchPolicy:
        """The deployment's policy: its batch limits and the gate's minimum forget samples (a
        gate that no batch can give power to sets no minimum)."""
        return cls(
            size=settings.batch_size,
            max_wait_seconds=settings.batch_max_wait_seconds,
            max_requests=settings.batch_max_requests,
            min_forget_samples=(settings.gate_min_forget_samples() or 0)
            if settings.batch_wait_for_gate_power
            else 0,
            gather_max_seconds=settings.batch_gather_max_seconds,
        )


def forget_sample_count(session: Session, user_ids: list[int]) -> int:
    """About how many samples of these users the active base trained on: their ratings in its
    training window, less each user's first (a sample needs a history). 0 without a base."""
    base = session.scalars(select(BaseModelVersion).where(BaseModelVersion.is_active)).first()
    if base is None or not user_ids:
        return 0
    until = (base.metrics or {}).get("train_until")
    query = select(Interaction.user_id, func.count()).where(Interaction.user_id.in_(user_ids))
    if until is not None:
        query = query.where(Interaction.ts <= until)
    counts = session.execute(query.group_by(Interaction.user_id)).all()
    return sum(max(0, n - 1) for _, n in counts)


def cut_batch(
    session: Session,
    policy: BatchPolicy,
    *,
    force: bool = False,
    actor: str = "scheduler",
    now: datetime | None = None,
) -> UnlearningJob | None:
    """A new queued job holding the oldest pending requests, if the policy (or ``force``) says
    it is time; ``None`` otherwise. A batch too small for the gate to judge waits for more
    requests; past ``gather_max_seconds`` a consolidation is queued instead, which completes
    every pending request (its base never sees their users)."""
    lock_queue(session)
    now = now or utcnow()
    pending = session.scalars(
        select(ForgetRequest)
        .where(ForgetRequest.status == RequestStatus.pending)
        .order_by(ForgetRequest.id)
        .limit(policy.max_requests)
        .with_for_update(skip_locked=True)  # rows being accepted right now wait for next time
    ).all()
    if not pending:
        return None
    waited = (now - pending[0].created_at).total_seconds()
    if len(pending) >= policy.size:
        reason = f"{len(pending)} requests pending (batch size {policy.size})"
    elif waited >= policy.max_wait_seconds:
        reason = f"oldest request waited {waited:.0f}s (limit {policy.max_wait_seconds:.0f}s)"
    elif force:
        reason = f"forced by {actor}"
    else:
        return None
    if policy.min_forget_samples and not force:
        samples = forget_sample_count(session, [r.user_id for r in pending if r.user_id])
        if 0 < samples < policy.min_forget_samples:
            if waited < policy.gather_max_seconds:
                return None  # the gate could not tell a no-op from forgetting: gather more
            # Never enough for the gate in time: retraining without them always works.
            request_consolidation(session, actor=f"{actor}: batch too small for the gate")
            return None
        reason += f"; {samples} forget samples (gate needs {policy.min_forget_samples})"
    job = UnlearningJob(
        kind=JobKind.unlearn,
        status=JobStatus.queued,
        reason=reason,
        created_at=now,
        request_count=len(pending),
    )
    session.add(job)
    session.flush()
    for request in pending:
        request.job_id = job.id
        transition(session, request, RequestStatus.scheduled, actor=actor, at=now, job=job.id)
    job_audit(session, job, actor, "created", to_status=JobStatus.queued, reason=reason)
    return job


def request_consolidation(session: Session, *, actor: str) -> UnlearningJob:
    """Queue a consolidation (retrain the base without forgotten users); one at a time."""
    lock_queue(session)
    open_ = session.scalars(
        select(UnlearningJob).where(
            UnlearningJob.kind == JobKind.consolidate,
            UnlearningJob.status.in_([JobStatus.queued, JobStatus.running]),
        )
    ).first()
    if open_ is not None:
        return open_
    job = UnlearningJob(kind=JobKind.consolidate, status=JobStatus.queued, reason=actor)
    session.add(job)
    session.flush()
    job_audit(session, job, actor, "created", to_status=JobStatus.queued, kind="consolidate")
    return job


def retry_job(session: Session, job_id: int, *, actor: str) -> UnlearningJob:
    """A new queued job for a failed job's requests (the failed job keeps its record)."""
    lock_queue(session)
    old = session.get(UnlearningJob, job_id)
    if old is None:
        raise LookupError(f"no job {job_id}")
    if old.status != JobStatus.failed:
        raise ValueError(f"job {job_id} is {old.status}; only a failed job can be retried")
    already = session.scalars(
        select(UnlearningJob).where(UnlearningJob.retry_of_id == job_id)
    ).first()
    if already is not None:
        return already
    job = UnlearningJob(
        kind=old.kind,
        status=JobStatus.queued,
        reason=f"retry of job {job_id} by {actor}",
        retry_of_id=job_id,
    )
    session.add(job)
    session.flush()
    requests = session.scalars(
        select(ForgetRequest).where(
            ForgetRequest.job_id == job_id, ForgetRequest.status == RequestStatus.failed
        )
    ).all()
    for request in requests:
        request.job_id = job.id
        request.error = None
        transition(session, request, RequestStatus.scheduled, actor=actor, job=job.id)
    job.request_count = len(requests)
    job_audit(session, job, actor, "created", to_status=JobStatus.queued, retry_of=job_id)
    return job


def _retry_depth(session: Session, job: UnlearningJob) -> int:
    """How many retries led to ``job`` (0: an original job)."""
    depth, current = 0, job
    while current.retry_of_id is not None:
        depth += 1
        current = session.get(UnlearningJob, current.retry_of_id)
    return depth


def auto_retry_failed(
    session: Session,
    *,
    max_retries: int,
    backoff_seconds: float,
    now: datetime | None = None,
) -> tuple[list[int], list[int]]:
    """Retry failed jobs whose requests are still open, each chain at most ``max_retries``
    times, the k-th retry ``backoff_seconds * 2**k`` after the failure. Returns (new job ids,
    jobs given up now). A job given up leaves its requests open (failed, quarantined): the
    deadline fallback (a consolidation) or an operator completes them; an audit row and the
    ``e2urec_forget_requests_open{status="failed"}`` gauge make it an alert."""
    lock_queue(session)
    now = now or db_now(session)
    retried = select(UnlearningJob.retry_of_id).where(UnlearningJob.retry_of_id.is_not(None))
    failed = session.scalars(
        select(UnlearningJob)
        .where(UnlearningJob.status == JobStatus.failed, UnlearningJob.id.not_in(retried))
        .order_by(UnlearningJob.id)
    ).all()
    new, exhausted = [], []
    for job in failed:
        still_open = any(r.status == RequestStatus.failed for r in job.requests)
        if job.kind == JobKind.unlearn and not still_open:
            continue  # completed elsewhere (a consolidation): nothing to retry
        depth = _retry_depth(session, job)
        if depth >= max_retries:
            given_up = session.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(
                    AuditEntry.entity == "job",
                    AuditEntry.entity_id == str(job.id),
                    AuditEntry.action == "retries_exhausted",
                )
            )
            if not given_up:
                job_audit(session, job, "auto-retry", "retries_exhausted", retries=depth)
                exhausted.append(job.id)
            continue
        finished = job.finished_at or now
        if (now - finished).total_seconds() < backoff_seconds * 2**depth:
            continue
        new.append(retry_job(session, job.id, actor="auto-retry").id)
    return new, exhausted


def deadline_fallback(
    session: Session,
    *,
    deadline_seconds: float,
    margin_seconds: float,
    now: datetime | None = None,
) -> UnlearningJob | None:
    """Queue a consolidation (deletion plus retraining: it always works, it only takes longer)
    when an open request is within ``margin_seconds`` of its legal deadline. None when no
    request is that old; the open (or new) consolidation job otherwise."""
    now = now or db_now(session)
    oldest = session.scalar(
        select(func.min(ForgetRequest.created_at)).where(ForgetRequest.status.in_(OPEN_STATUSES))
    )
    if oldest is None or (now - oldest).total_seconds() < deadline_seconds - margin_seconds:
        return None
    return request_consolidation(session, actor="deadline")


def jobs_needing_a_message(
    session: Session, *, now: datetime | None = None, resend_after: float = 30.0
) -> list[int]:
    """Jobs a worker should be told about: queued ones never (or long ago) sent, and running
    ones whose lease has run out (their worker died). Re-sending is harmless: a claim is
    needed to run, so a duplicate message does nothing."""
    now = now or db_now(session)
    live = session.scalar(
        select(func.count())
        .select_from(UnlearningJob)
        .where(UnlearningJob.status == JobStatus.running, UnlearningJob.lease_expires_at >= now)
    )
    if live:  # it sends the next one itself when it is done; if it dies its lease runs out
        return []
    stale = now - timedelta(seconds=resend_after)
    rows = session.scalars(
        select(UnlearningJob.id)
        .where(
            (
                (UnlearningJob.status == JobStatus.queued)
                & (UnlearningJob.enqueued_at.is_(None) | (UnlearningJob.enqueued_at < stale))
            )
            | (
                (UnlearningJob.status == JobStatus.running)
                & (UnlearningJob.lease_expires_at < now)
                & (UnlearningJob.enqueued_at.is_(None) | (UnlearningJob.enqueued_at < stale))
            )
        )
        .order_by(UnlearningJob.id)
    ).all()
    return list(rows)


def mark_enqueued(session: Session, job_ids: list[int]) -> None:
    if job_ids:
        session.execute(
            update(UnlearningJob).where(UnlearningJob.id.in_(job_ids)).values(enqueued_at=utcnow())
        )
