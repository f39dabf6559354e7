"""Request and response bodies of the public API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, computed_field

from service.core.db.models import ForgetRequest, RequestStatus

# External ids: what the catalogue's owner uses (MovieLens ids, account ids, SKUs).
EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# A job's or adapter's metrics: empty until it has any (the column is nullable).
MetricsDict = Annotated[dict, BeforeValidator(lambda value: value or {})]
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class ForgetRequestOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    request_id: str = Field(description="Public id of the request (a UUID)")
    status: RequestStatus
    # Not read from the row (whose user_id is the internal key): `of` fills it in.
    user_id: str | None = Field(
        None,
        validation_alias="external_id",
        description="The user's external id; null once the user's data has been deleted",
    )
    created_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    batch: int | None = Field(
        None, validation_alias="job_id", description="The unlearning job (batch) that took it"
    )
    adapter_version: int | None = Field(
        None,
        validation_alias="adapter_version_id",
        description="The adapter version that serves the completed deletion",
    )
    error: str | None = None

    @computed_field
    @property
    def status_url(self) -> str:
        return f"/forget/requests/{self.request_id}"

    @classmethod
    def of(cls, request: ForgetRequest, external_id: str | None) -> ForgetRequestOut:
        """The row as the API shows it; the external id is not on the row (it is the user's)."""
        return cls.model_validate(request).model_copy(update={"user_id": external_id})


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    genres: list[str]
    score: float = Field(description="P(like) from the LLM, or a popularity count")
    source: str = Field(description="co-occurrence, popularity or explicit")
    stage_score: float | None = Field(
        None,
        description="The candidate stage's score when the LLM ranked the item (co-occurrence "
        "or popularity count; the order is by this times P(like)^like_weight when rank_by is "
        "blend); null for explicit candidates and unpersonalised answers",
    )


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
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    id: int
    kind: str
    status: str
    reason: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    stage: str
    step: int
    total_steps: int
    loss: float | None
    request_count: int
    adapter_version: int | None = Field(validation_alias="adapter_version_id")
    base_model: int | None = Field(validation_alias="base_model_id")
    lease_owner: str | None
    heartbeat_at: datetime | None
    error: str | None
    metrics: MetricsDict

    @computed_field
    @property
    def duration_seconds(self) -> float | None:
        end, start = self.finished_at, self.started_at
        return (end - start).total_seconds() if end and start else None

    @computed_field(description="step / total_steps of the current stage")
    @property
    def progress(self) -> float | None:
        return self.step / self.total_steps if self.total_steps else None


class JobDetail(JobOut):
    requests: list[dict]
    audit: list[dict]


class AdapterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    id: int
    base_model: int = Field(validation_alias="base_model_id")
    parent: int | None = Field(validation_alias="parent_id")
    job: int | None = Field(validation_alias="job_id")
    status: str
    is_active: bool
    checksum: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    forgotten_users: int
    metrics: MetricsDict


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
