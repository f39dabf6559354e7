"""Operators' API (admin scope): the queue, jobs, adapters, and the levers (batch now, retry,
consolidate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy import func, select

from service.api.deps import AdminCaller, ReadSession, SettingsDep
from service.api.schemas import (
    AdapterOut,
    ForgetRequestOut,
    JobDetail,
    JobOut,
    Problem,
    QueueView,
    WorkerOut,
)
from service.core.db.models import (
    OPEN_STATUSES,
    AdapterVersion,
    AuditEntry,
    ForgetRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
    WorkerHeartbeat,
    utcnow,
)
from service.core.db.session import session_scope
from service.domain.jobs import (
    BatchPolicy,
    cut_batch,
    mark_enqueued,
    request_consolidation,
    retry_job,
)
from service.domain.registry import active_adapter, active_base
from service.domain.tasks_client import send_run_job

router = APIRouter(prefix="/admin", tags=["admin"])
MAX_ID = 2**31 - 1  # the ids are 32-bit integers in the database
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Job (batch) id")]


def _kick(settings, job_id: int) -> None:
    """Tell a worker now; if the broker is away the next tick will."""
    if send_run_job(settings, job_id):
        with session_scope(settings.db_url) as session:
            mark_enqueued(session, [job_id])


@router.get("/queue", response_model=QueueView, summary="The unlearning queue at a glance")
def queue(session: ReadSession, caller: AdminCaller, settings: SettingsDep) -> QueueView:
    counts = dict(
        session.execute(
            select(ForgetRequest.status, func.count()).group_by(ForgetRequest.status)
        ).all()
    )
    oldest = session.scalar(
        select(func.min(ForgetRequest.created_at)).where(
            ForgetRequest.status == RequestStatus.pending
        )
    )
    oldest_open = session.scalar(
        select(func.min(ForgetRequest.created_at)).where(ForgetRequest.status.in_(OPEN_STATUSES))
    )
    now = utcnow()
    running = session.scalars(
        select(UnlearningJob)
        .where(UnlearningJob.status == JobStatus.running)
        .order_by(UnlearningJob.id)
    ).first()
    recent = session.scalars(
        select(UnlearningJob).order_by(UnlearningJob.id.desc()).limit(20)
    ).all()
    adapter = active_adapter(session)
    base = active_base(session)
    workers = session.scalars(
        select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_seen.desc())
    ).all()
    return QueueView(
        pending=counts.get(RequestStatus.pending, 0),
        scheduled=counts.get(RequestStatus.scheduled, 0),
        running_requests=counts.get(RequestStatus.running, 0),
        failed_requests=counts.get(RequestStatus.failed, 0),
        oldest_pending_age_seconds=(now - oldest).total_seconds() if oldest else None,
        oldest_open_age_seconds=(now - oldest_open).total_seconds() if oldest_open else None,
        deadline_seconds=settings.forget_deadline_seconds,
        running_job=JobOut.model_validate(running) if running else None,
        recent_jobs=[JobOut.model_validate(j) for j in recent],
        active_adapter=AdapterOut.model_validate(adapter) if adapter else None,
        active_base=base.id if base else None,
        workers=[
            WorkerOut(
                name=w.name,
                queues=w.queues,
                device=w.device,
                last_seen=w.last_seen,
                seconds_since_seen=(now - w.last_seen).total_seconds(),
                running_job=w.running_job_id,
            )
            for w in workers
        ],
    )


@router.get("/jobs", response_model=list[JobOut], summary="Jobs, newest first")
def jobs(
    session: ReadSession,
    caller: AdminCaller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> list[JobOut]:
    q = select(UnlearningJob).order_by(UnlearningJob.id.desc()).limit(limit)
    if job_status is not None:
        q = q.where(UnlearningJob.status == job_status)
    return [JobOut.model_validate(j) for j in session.scalars(q)]


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    responses={404: {"model": Problem}},
    summary="One job with its requests and audit trail",
)
def job(job_id: JobId, session: ReadSession, caller: AdminCaller) -> JobDetail:
    row = session.get(UnlearningJob, job_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    requests = [
        {"request_id": r.request_id, "status": r.status, "created_at": r.created_at}
        for r in row.requests
    ]
    trail = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.entity == "job", AuditEntry.entity_id == str(job_id))
        .order_by(AuditEntry.id)
    ).all()
    audit = [
        {"at": a.at, "actor": a.actor, "action": a.action, "to": a.to_status, "detail": a.detail}
        for a in trail
    ]
    return JobDetail(**JobOut.model_validate(row).model_dump(), requests=requests, audit=audit)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"model": Problem}, 409: {"model": Problem}},
    summary="Run a failed job's requests again, as a new job",
)
def retry(job_id: JobId, settings: SettingsDep, caller: AdminCaller) -> JobOut:
    try:
        with session_scope(settings.db_url) as session:
            new = retry_job(session, job_id, actor=caller.name)
            body = JobOut.model_validate(new)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    _kick(settings, body.id)
    return body


@router.post(
    "/batches",
    response_model=JobOut | None,
    status_code=status.HTTP_202_ACCEPTED,
    responses={204: {"description": "No pending requests: nothing to batch"}},
    summary="Cut a batch from the pending requests now",
)
def batch_now(settings: SettingsDep, caller: AdminCaller, response: Response) -> JobOut | None:
    with session_scope(settings.db_url) as session:
        policy = BatchPolicy.from_settings(settings)
        job = cut_batch(session, policy, force=True, actor=caller.name)
        body = JobOut.model_validate(job) if job is not None else None
    if body is None:
        response.status_code = status.HTTP_204_NO_CONTENT
        return None
    _kick(settings, body.id)
    return body


@router.post(
    "/consolidate",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Retrain the base model on the retained data only",
)
def consolidate(settings: SettingsDep, caller: AdminCaller) -> JobOut:
    """Queues a consolidation job: the base is retrained without every forgotten or waiting
    user, and adapters start again from empty on the new base."""
    with session_scope(settings.db_url) as session:
        body = JobOut.model_validate(request_consolidation(session, actor=caller.name))
    _kick(settings, body.id)
    return body


@router.get(
    "/requests", response_model=list[ForgetRequestOut], summary="Forget requests, newest first"
)
def requests_(
    session: ReadSession,
    caller: AdminCaller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    request_status: Annotated[RequestStatus | None, Query(alias="status")] = None,
) -> list[ForgetRequestOut]:
    q = select(ForgetRequest).order_by(ForgetRequest.id.desc()).limit(limit)
    if request_status is not None:
        q = q.where(ForgetRequest.status == request_status)
    # No user ids here: the operators' view of the lifecycle needs none.
    return [ForgetRequestOut.of(r, None) for r in session.scalars(q)]


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> FileResponse:
    """The operations page (static; it asks for an admin key and polls the admin API)."""
    return FileResponse(Path(__file__).resolve().parents[1] / "static" / "dashboard.html")


@router.get("/adapters", response_model=list[AdapterOut], summary="Adapter versions")
def adapters(
    session: ReadSession, caller: AdminCaller, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[AdapterOut]:
    rows = session.scalars(select(AdapterVersion).order_by(AdapterVersion.id.desc()).limit(limit))
    return [AdapterOut.model_validate(a) for a in rows]


@router.get(
    "/adapters/{adapter_id}",
    response_model=AdapterOut,
    responses={404: {"model": Problem}},
    summary="One adapter version",
)
def adapter(
    adapter_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
    session: ReadSession,
    caller: AdminCaller,
) -> AdapterOut:
    row = session.get(AdapterVersion, adapter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no adapter version {adapter_id}")
    return AdapterOut.model_validate(row)
