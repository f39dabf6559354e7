"""The unlearning queue, kept in the database (the source of truth; Celery only carries ids).

* Batching: pending forget requests are claimed into a job when there are enough of them or the
  oldest has waited long enough.
* Claiming: one job runs at a time, oldest first, under a lease the running worker renews. A
  crashed worker's lease runs out and the next claim takes the job over; a duplicate message
  finds the job already claimed, or done, and does nothing.
* Finishing: publishing an adapter, completing the requests, writing their certificates and
  deleting the users' data happen in one transaction, guarded by the lease.

Every function here runs inside the caller's transaction and serialises on one queue lock
(``pg_advisory_xact_lock`` on PostgreSQL; SQLite's writers are serialised already).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from e2urec.atomic import folder_sha256
from service import audit, receipts
from service.db.clock import db_now
from service.db.models import (
    OPEN_STATUSES,
    AdapterStatus,
    AdapterVersion,
    AuditEntry,
    BaseModel,
    Certificate,
    ForgetRequest,
    Interaction,
    JobKind,
    JobStatus,
    Receipt,
    RequestStatus,
    UnlearningJob,
    User,
    utcnow,
)
from service.forget import transition
from service.receipts import Signer
from service.registry import activate_adapter

QUEUE_LOCK = 0x6532_7572  # "e2ur": one advisory lock for every queue change


class LeaseLost(RuntimeError):
    """Another worker owns this job now (ours expired): stop without writing anything."""


def lock_queue(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": QUEUE_LOCK})


def _job_audit(session: Session, job: UnlearningJob, actor: str, action: str, **detail) -> None:
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
    base = session.scalars(select(BaseModel).where(BaseModel.is_active)).first()
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
    _job_audit(session, job, actor, "created", to_status=JobStatus.queued, reason=reason)
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
    _job_audit(session, job, actor, "created", to_status=JobStatus.queued, kind="consolidate")
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
    _job_audit(session, job, actor, "created", to_status=JobStatus.queued, retry_of=job_id)
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
                _job_audit(session, job, "auto-retry", "retries_exhausted", retries=depth)
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
        _job_audit(
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
    _job_audit(
        session, job, actor, "failed", from_status=previous, to_status=JobStatus.failed, error=error
    )


@dataclass
class Published:
    adapter_id: int | None
    completed_requests: int
    deleted_interactions: int
    deleted_users: int


def _complete(
    session: Session,
    job: UnlearningJob,
    requests: list[ForgetRequest],
    *,
    owner: str,
    base_model_id: int,
    adapter_id: int | None,
    gate: dict,
    signer: Signer,
    kind: str | None = None,
) -> tuple[int, int]:
    """Complete ``requests`` with their certificates and delete their users' data; returns
    (interactions deleted, users deleted)."""
    now = utcnow()
    user_ids = [r.user_id for r in requests if r.user_id is not None]
    counts = dict(
        session.execute(
            select(Interaction.user_id, func.count())
            .where(Interaction.user_id.in_(user_ids))
            .group_by(Interaction.user_id)
        ).all()
    )
    for request in requests:
        request.adapter_version_id = adapter_id
        request.error = None
        transition(
            session,
            request,
            RequestStatus.completed,
            actor=owner,
            at=now,
            job=job.id,
            adapter=adapter_id,
            base=base_model_id,
        )
        session.add(
            Certificate(
                request_id=request.id,
                user_hash=request.user_hash,
                job_id=job.id,
                base_model_id=base_model_id,
                adapter_version_id=adapter_id,
                requested_at=request.created_at,
                completed_at=now,
                interactions_deleted=counts.get(request.user_id, 0),
                gate=gate,
            )
        )
    session.flush()
    adapter = session.get(AdapterVersion, adapter_id) if adapter_id is not None else None
    base = session.get(BaseModel, base_model_id)
    for request in requests:
        _receipt(
            session,
            signer,
            request,
            kind=kind or ("consolidated" if adapter is None else "unlearned"),
            job=job,
            base=base,
            adapter=adapter,
            completed_at=now,
            interactions_deleted=counts.get(request.user_id, 0),
            gate=gate,
        )
    deleted = session.execute(delete(Interaction).where(Interaction.user_id.in_(user_ids)))
    session.flush()
    users = session.execute(delete(User).where(User.id.in_(user_ids)))  # requests keep the hash
    return deleted.rowcount, users.rowcount


def _receipt(
    session: Session,
    signer: Signer,
    request: ForgetRequest,
    *,
    kind: str,
    job: UnlearningJob,
    base: BaseModel,
    adapter: AdapterVersion | None,
    completed_at: datetime,
    interactions_deleted: int | None,
    gate: dict,
) -> None:
    if kind == "unlearned":
        statement = (
            f"The user's interactions and profile were deleted, and adapter {adapter.id}, which "
            "the quality gate judged to have removed the user's influence, serves on base "
            f"model {base.id}. Base model {base.id} was trained with the user's data and still "
            "holds it until a consolidation retrains the base without the user; a later "
            "receipt in this chain records that consolidation."
        )
    elif kind == "never_trained":
        statement = (
            f"No model serving was trained on the user's data (none of it was in base model "
            f"{base.id}'s training window); the user's interactions and profile were deleted."
        )
    else:
        statement = (
            f"Base model {base.id} was trained without the user's data and serves; the user's "
            "interactions and profile are deleted, and the model files of every base that "
            "saw the user are purged."
        )
    receipts.append(
        session,
        signer,
        request.id,
        kind,
        {
            "request_id": request.request_id,
            "user_hash": request.user_hash,
            "requested_at": request.created_at.isoformat(),
            "completed_at": completed_at.isoformat(),
            "batch": job.id,
            "base_model": base.id,
            "base_sha256": base.checksum,
            "adapter_version": adapter.id if adapter is not None else None,
            "adapter_sha256": adapter.checksum if adapter is not None else None,
            "interactions_deleted": interactions_deleted,
            "gate": gate,
            "statement": statement,
        },
    )


def _succeed(session: Session, job: UnlearningJob, owner: str, **detail) -> None:
    job.status = JobStatus.succeeded
    job.finished_at = utcnow()
    job.stage = "done"
    job.lease_owner = None
    job.lease_expires_at = None
    _job_audit(
        session,
        job,
        owner,
        "succeeded",
        from_status=JobStatus.running,
        to_status=JobStatus.succeeded,
        **detail,
    )


def publish_and_complete(
    session: Session,
    job_id: int,
    owner: str,
    *,
    base_model_id: int,
    parent_id: int | None,
    path: str,
    checksum: str,
    metrics: dict,
    probes: list[dict],
    gate: dict,
    signer: Signer,
) -> Published:
    """In one transaction: register and activate the adapter, complete every request of the job
    with its certificate, and delete the forgotten users' interactions and profiles. If any of it
    fails nothing happens (the adapter is not active, the data is still there)."""
    lock_queue(session)
    job = hold_lease(session, job_id, owner)
    # The folder was written before the gate ran; whatever happened to it since (a purge, a
    # disk fault), what becomes active must be exactly what was gated.
    actual = folder_sha256(path) if Path(path).is_dir() else "missing"
    if actual != checksum:
        raise RuntimeError(
            f"adapter folder {path} is {'gone' if actual == 'missing' else 'changed'} since "
            "the gate checked it; nothing published (the job can be retried)"
        )
    adapter = AdapterVersion(
        base_model_id=base_model_id,
        parent_id=parent_id,
        job_id=job.id,
        path=path,
        checksum=checksum,
        status=AdapterStatus.ready,
        metrics=metrics,
        probes=probes,
        forgotten_users=0,
    )
    session.add(adapter)
    session.flush()
    audit.record(
        session,
        actor=owner,
        entity="adapter",
        entity_id=adapter.id,
        action="created",
        to_status=AdapterStatus.ready,
        job=job.id,
    )
    activate_adapter(session, adapter, actor=owner)
    requests = [r for r in job.requests if r.status == RequestStatus.running]
    interactions, users = _complete(
        session,
        job,
        requests,
        owner=owner,
        base_model_id=base_model_id,
        adapter_id=adapter.id,
        gate=gate,
        signer=signer,
    )
    parent = session.get(AdapterVersion, parent_id) if parent_id is not None else None
    adapter.forgotten_users = (parent.forgotten_users if parent else 0) + len(requests)
    job.adapter_version_id = adapter.id
    job.base_model_id = base_model_id
    job.metrics = metrics
    _succeed(session, job, owner, adapter=adapter.id, deleted_interactions=interactions)
    return Published(adapter.id, len(requests), interactions, users)


def complete_without_training(
    session: Session,
    job_id: int,
    owner: str,
    *,
    base_model_id: int,
    adapter_id: int | None,
    metrics: dict,
    signer: Signer,
) -> Published:
    """The job's users have no samples the base trained on (too few ratings, or all after its
    training window): nothing to unlearn, so their requests complete on the model serving now
    and their data is deleted."""
    lock_queue(session)
    job = hold_lease(session, job_id, owner)
    requests = [r for r in job.requests if r.status == RequestStatus.running]
    interactions, users = _complete(
        session,
        job,
        requests,
        owner=owner,
        base_model_id=base_model_id,
        adapter_id=adapter_id,
        gate=metrics,
        signer=signer,
        kind="never_trained",
    )
    job.base_model_id = base_model_id
    job.metrics = metrics
    _succeed(session, job, owner, trained=False, deleted_interactions=interactions)
    return Published(adapter_id, len(requests), interactions, users)


def finish_consolidation(
    session: Session,
    job_id: int,
    owner: str,
    *,
    path,
    recipe: dict,
    excluded_users: set[int],
    signer: Signer,
) -> tuple[int, Published]:
    """Activate the retrained base (adapters of the old one retire) and complete every open
    request of a user the new base was trained without: it never saw them."""
    from service.registry import register_base

    lock_queue(session)
    job = hold_lease(session, job_id, owner)
    base = register_base(session, path, actor=owner, metrics=recipe, job_id=job.id)
    requests = session.scalars(
        select(ForgetRequest).where(
            ForgetRequest.status.in_(
                [
                    RequestStatus.pending,
                    RequestStatus.scheduled,
                    RequestStatus.running,
                    RequestStatus.failed,
                ]
            ),
            ForgetRequest.user_id.in_(excluded_users),
        )
    ).all()
    for request in requests:  # each walks the legal path to "completed"
        request.job_id = job.id
        if request.status in (RequestStatus.pending, RequestStatus.failed):
            transition(session, request, RequestStatus.scheduled, actor=owner, job=job.id)
        if request.status == RequestStatus.scheduled:
            transition(session, request, RequestStatus.running, actor=owner, job=job.id)
    gate = {"consolidation": job.id, "trained_without_user": 1.0}
    interactions, users = _complete(
        session,
        job,
        list(requests),
        owner=owner,
        base_model_id=base.id,
        adapter_id=None,
        gate=gate,
        signer=signer,
    )
    # Requests completed earlier by an adapter: their receipts said the base still held the
    # user until a consolidation. This is it: the chain records it for each of them.
    consolidated = select(Receipt.request_id).where(Receipt.kind == "consolidated")
    earlier = session.scalars(
        select(ForgetRequest)
        .where(
            ForgetRequest.status == RequestStatus.completed, ForgetRequest.id.not_in(consolidated)
        )
        .order_by(ForgetRequest.id)
    ).all()
    for request in earlier:
        _receipt(
            session,
            signer,
            request,
            kind="consolidated",
            job=job,
            base=base,
            adapter=None,
            completed_at=request.completed_at or utcnow(),
            interactions_deleted=None,
            gate=gate,
        )
    job.base_model_id = base.id
    job.metrics = recipe.get("metrics", {})
    job.request_count = len(requests)
    _succeed(session, job, owner, base=base.id, completed=len(requests))
    return base.id, Published(None, len(requests), interactions, users)


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
