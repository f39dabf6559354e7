"""Request and response bodies of the public API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from service.db.models import ForgetRequest, RequestStatus

# External ids: what the catalogue's owner uses (MovieLens ids, account ids, SKUs).
EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
ExternalId = Annotated[str, Field(pattern=EXTERNAL_ID, examples=["42"])]
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class ForgetRequestOut(BaseModel):
    request_id: str = Field(description="Public id of the request (a UUID)")
    status: RequestStatus
    user_id: str | None = Field(
        description="The user's external id; null once the user's data has been deleted"
    )
    created_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    batch: int | None = Field(None, description="The unlearning job (batch) that took it")
    adapter_version: int | None = Field(
        None, description="The adapter version that serves the completed deletion"
    )
    error: str | None = None
    status_url: str

    @classmethod
    def of(cls, request: ForgetRequest, external_id: str | None) -> ForgetRequestOut:
        return cls(
            request_id=request.request_id,
            status=RequestStatus(request.status),
            user_id=external_id,
            created_at=request.created_at,
            scheduled_at=request.scheduled_at,
            started_at=request.started_at,
            completed_at=request.completed_at,
            failed_at=request.failed_at,
            batch=request.job_id,
            adapter_version=request.adapter_version_id,
            error=request.error,
            status_url=f"/forget/requests/{request.request_id}",
        )


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    genres: list[str]
    score: float = Field(description="P(like) from the LLM, or a popularity count")
    source: str = Field(description="co-occurrence, popularity or explicit")


class ModelVersionOut(BaseModel):
    base: int | None
    adapter: int | None
    label: str


class Recommendations(BaseModel):
    user_id: str
    personalized: bool = Field(
        description="False when the user has asked to be forgotten: no history is used"
    )
    model_version: ModelVersionOut | None = Field(
        description="The model that scored these items (null when no model scored them)"
    )
    items: list[RecommendedItem]
    note: str | None = None


class Problem(BaseModel):
    detail: str


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    reason: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    attempts: int
    stage: str
    step: int
    total_steps: int
    progress: float | None = Field(description="step / total_steps of the current stage")
    loss: float | None
    request_count: int
    adapter_version: int | None
    base_model: int | None
    lease_owner: str | None
    heartbeat_at: datetime | None
    error: str | None
    metrics: dict

    @classmethod
    def of(cls, job) -> JobOut:
        end = job.finished_at
        duration = (end - job.started_at).total_seconds() if end and job.started_at else None
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            reason=job.reason,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_seconds=duration,
            attempts=job.attempts,
            stage=job.stage,
            step=job.step,
            total_steps=job.total_steps,
            progress=job.step / job.total_steps if job.total_steps else None,
            loss=job.loss,
            request_count=job.request_count,
            adapter_version=job.adapter_version_id,
            base_model=job.base_model_id,
            lease_owner=job.lease_owner,
            heartbeat_at=job.heartbeat_at,
            error=job.error,
            metrics=job.metrics or {},
        )


class JobDetail(JobOut):
    requests: list[dict]
    audit: list[dict]


class AdapterOut(BaseModel):
    id: int
    base_model: int
    parent: int | None
    job: int | None
    status: str
    is_active: bool
    checksum: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    forgotten_users: int
    metrics: dict

    @classmethod
    def of(cls, a) -> AdapterOut:
        return cls(
            id=a.id,
            base_model=a.base_model_id,
            parent=a.parent_id,
            job=a.job_id,
            status=a.status,
            is_active=a.is_active,
            checksum=a.checksum,
            created_at=a.created_at,
            activated_at=a.activated_at,
            retired_at=a.retired_at,
            forgotten_users=a.forgotten_users,
            metrics=a.metrics or {},
        )


class WorkerOut(BaseModel):
    name: str
    queues: str
    device: str
    last_seen: datetime
    seconds_since_seen: float
    running_job: int | None


class QueueView(BaseModel):
    pending: int
    scheduled: int
    running_requests: int
    failed_requests: int
    oldest_pending_age_seconds: float | None
    oldest_open_age_seconds: float | None = Field(
        description="Age of the oldest request not completed (pending, scheduled, running, failed)"
    )
    deadline_seconds: float = Field(description="Every request must complete within this")
    running_job: JobOut | None
    recent_jobs: list[JobOut]
    active_adapter: AdapterOut | None
    active_base: int | None
    workers: list[WorkerOut]


class ReceiptOut(BaseModel):
    payload: str = Field(description="The canonical JSON that was hashed and signed, verbatim")
    hash: str = Field(description="SHA-256 of payload (hex); the next receipt names it")
    signature: str = Field(description="Ed25519 signature of payload (base64)")


class CertificateOut(BaseModel):
    request_id: str
    user_hash: str = Field(description="HMAC-SHA256 of the user id with the deployment's salt")
    batch: int
    base_model: int
    adapter_version: int | None
    requested_at: datetime
    completed_at: datetime
    interactions_deleted: int
    gate: dict
    public_key: str = Field(description="Ed25519 public key (hex) that signed the receipts")
    receipts: list[ReceiptOut] = Field(
        description="This request's signed receipts, oldest first (see /certificates/public-key)"
    )


class PublicKeyOut(BaseModel):
    algorithm: str = "Ed25519"
    public_key: str = Field(description="32 bytes, hex")


class ChainOut(BaseModel):
    public_key: str
    receipts: list[ReceiptOut]
