"""The service's tables (SQLAlchemy 2 typed models). The schema itself changes only through
Alembic migrations in ``migrations/``; these classes must match the latest one.

Lifecycle of a user's data (see README, "Forgetting a user"):
  1. ``POST /forget/{user_id}`` creates a :class:`ForgetRequest` and sets ``User.quarantined_at``
     in one transaction; from then on serving ignores the user's history.
  2. The worker claims pending requests into an :class:`UnlearningJob` (a batch), trains an
     adapter that forgets them, publishes it as an :class:`AdapterVersion` and marks the requests
     completed.
  3. In the same transaction the user's interactions and profile are deleted; what remains is a
     :class:`Certificate` naming the user only by a salted hash.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use e.g. datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON, datetime: UTCDateTime}


# Statuses are plain strings checked in code: adding one needs no ALTER TYPE.
class RequestStatus(enum.StrEnum):
    pending = "pending"  # accepted, quarantined, waiting for a batch
    scheduled = "scheduled"  # claimed into a batch (job), waiting for a worker
    running = "running"  # its job is training
    completed = "completed"  # forgotten by a published adapter; data deleted
    failed = "failed"  # its job failed; still quarantined, open for a retry


OPEN_STATUSES = (
    RequestStatus.pending,
    RequestStatus.scheduled,
    RequestStatus.running,
    RequestStatus.failed,
)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class JobKind(enum.StrEnum):
    unlearn = "unlearn"
    consolidate = "consolidate"


class AdapterStatus(enum.StrEnum):
    ready = "ready"  # written and verified, not yet serving
    active = "active"  # what serving uses
    retired = "retired"  # superseded; still forgets everything up to its batch
    purged = "purged"  # files deleted: it no longer reflects every deletion


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    gender: Mapped[str | None] = mapped_column(String(32))
    age: Mapped[str | None] = mapped_column(String(32))
    occupation: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set with the forget request, in the same transaction: serving stops using the history.
    quarantined_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(512))
    genres: Mapped[list] = mapped_column(default=list)
    metadata_: Mapped[dict] = mapped_column("metadata", default=dict)


class Interaction(Base):
    __tablename__ = "interactions"
    __table_args__ = (Index("ix_interactions_user_ts", "user_id", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    rating: Mapped[float] = mapped_column(Float)
    ts: Mapped[int] = mapped_column(BigInteger)  # unix seconds, as in the datasets


class BaseModelVersion(Base):
    """A frozen base LLMRec. Adapters are trained against exactly one base."""

    __tablename__ = "base_models"
    __table_args__ = (
        Index(
            "uq_base_models_active",
            "is_active",
            unique=True,
            postgresql_where=text("is_active"),
            sqlite_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    job_id: Mapped[int | None] = mapped_column(  # the consolidation that trained it
        ForeignKey("unlearning_jobs.id", use_alter=True, name="fk_base_models_job")
    )
    metrics: Mapped[dict] = mapped_column(default=dict)
    # Set when its folder is deleted: a retired base still carries users forgotten since.
    purged_at: Mapped[datetime | None] = mapped_column(default=None)


class AdapterVersion(Base):
    """One published unlearning adapter. ``id`` is the version number serving reports."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        Index(
            "uq_adapter_versions_active",
            "is_active",
            unique=True,
            postgresql_where=text("is_active"),
            sqlite_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("unlearning_jobs.id"))
    path: Mapped[str] = mapped_column(String(1024))
    checksum: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
    forgotten_users: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict] = mapped_column(default=dict)
    # Probe prompts and the scores the worker saw: serving repeats them before activating.
    probes: Mapped[list] = mapped_column(default=list)


class UnlearningJob(Base):
    """A batch of forget requests and the run that unlearns them (or a consolidation)."""

    __tablename__ = "unlearning_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.unlearn)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, index=True)
    reason: Mapped[str] = mapped_column(String(128), default="")  # why the batch was cut
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The lease: a worker owns a running job until lease_expires_at; it renews it while alive.
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("unlearning_jobs.id"))
    stage: Mapped[str] = mapped_column(String(64), default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    request_count: Mapped[int] = mapped_column(Integer, default=0)
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    adapter_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", use_alter=True, name="fk_jobs_adapter_version")
    )
    metrics: Mapped[dict] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    requests: Mapped[list[ForgetRequest]] = relationship(back_populates="job")


class ForgetRequest(Base):
    __tablename__ = "forget_requests"
    __table_args__ = (
        # At most one open request per user: concurrent duplicates collide here, not in code.
        Index(
            "uq_forget_requests_open_user",
            "user_id",
            unique=True,
            postgresql_where=text("status <> 'completed'"),
            sqlite_where=text("status <> 'completed'"),
        ),
    )

    # Acceptance order: serving processes keep the last id they applied as a watermark.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36), unique=True)  # public, a UUID
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    user_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.pending, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("unlearning_jobs.id"), index=True)
    adapter_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    error: Mapped[str | None] = mapped_column(Text, default=None)

    job: Mapped[UnlearningJob | None] = relationship(back_populates="requests")


class Certificate(Base):
    """Proof that a request was honoured, kept after the user's data is gone."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("forget_requests.id"), unique=True)
    user_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("unlearning_jobs.id"))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    # The adapter that forgets the user; null when a consolidation retrained the base without
    # the user, so the base itself never saw them.
    adapter_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    requested_at: Mapped[datetime]
    completed_at: Mapped[datetime]
    interactions_deleted: Mapped[int] = mapped_column(Integer, default=0)
    gate: Mapped[dict] = mapped_column(default=dict)


class Receipt(Base):
    """A signed, chained receipt of what was done for a forget request: an append-only chain
    (each carries the previous one's hash) that a third party checks with the public key.
    ``payload`` is the exact canonical JSON that was hashed and signed."""

    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)  # 1, 2, 3 ... with no gap
    request_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("forget_requests.id"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # "unlearned" | "never_trained" | "consolidated"
    payload: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))  # base64 Ed25519


class AuditEntry(Base):
    """Append-only: every state change of a forget request, job or adapter."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))  # forget_request, job, adapter, base_model
    entity_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(16), default=None)
    to_status: Mapped[str | None] = mapped_column(String(16), default=None)
    detail: Mapped[dict] = mapped_column(default=dict)


class ServiceState(Base):
    """Facts about the whole deployment, e.g. the imported catalogue's domain and source."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkerHeartbeat(Base):
    """Workers seen: each worker process refreshes its row while it lives."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    queues: Mapped[str] = mapped_column(String(256), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    running_job_id: Mapped[int | None] = mapped_column(Integer, default=None)
    device: Mapped[str] = mapped_column(String(64), default="")
