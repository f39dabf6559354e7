"""Finishing a job in one transaction guarded by its lease: publish the adapter (or the
consolidated base), complete the requests with certificates and signed receipts, delete the
users' data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from e2urec.atomic import folder_sha256
from service.core.db.models import (
    AdapterStatus,
    AdapterVersion,
    BaseModelVersion,
    Certificate,
    ForgetRequest,
    Interaction,
    JobStatus,
    Receipt,
    RequestStatus,
    UnlearningJob,
    User,
    utcnow,
)
from service.domain import audit, receipts
from service.domain.forget import transition
from service.domain.jobs.lease import hold_lease
from service.domain.jobs.queue import job_audit, lock_queue
from service.domain.receipts import Signer
from service.domain.registry import activate_adapter


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
    base = session.get(BaseModelVersion, base_model_id)
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
    base: BaseModelVersion,
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
    job_audit(
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
    from service.domain.registry import register_base

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
