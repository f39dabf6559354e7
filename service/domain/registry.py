"""The model registry in the database: base models and the adapter versions trained on them.

Exactly one base and at most one adapter are active (partial unique indexes enforce it); serving
processes follow whatever is active. Activation retires the previous adapter in the same
transaction, with audit rows.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from e2urec.atomic import folder_sha256
from service.core.db.models import AdapterStatus, AdapterVersion, BaseModelVersion, utcnow
from service.domain import audit


def active_base(session: Session) -> BaseModelVersion | None:
    return session.scalars(select(BaseModelVersion).where(BaseModelVersion.is_active)).first()


def active_adapter(session: Session) -> AdapterVersion | None:
    return session.scalars(select(AdapterVersion).where(AdapterVersion.is_active)).first()


def active_ids(session: Session) -> tuple[int | None, int | None]:
    """(base id, adapter id) the registry says must serve, in two indexed one-row reads.

    A request reads this in the same transaction as the user's data, so it can never see a
    completed deletion and still be scored by the version from before it."""
    base = session.scalar(select(BaseModelVersion.id).where(BaseModelVersion.is_active))
    if base is None:
        return None, None
    adapter = session.scalar(
        select(AdapterVersion.id).where(
            AdapterVersion.is_active, AdapterVersion.base_model_id == base
        )
    )
    return base, adapter


def register_base(
    session: Session,
    path: Path,
    *,
    actor: str,
    metrics: dict | None = None,
    job_id: int | None = None,
) -> BaseModelVersion:
    """Record a trained base model folder and make it the active base (adapters of the previous
    base stop serving with it)."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    previous = active_base(session)
    if previous is not None:
        previous.is_active = False
        session.execute(
            update(AdapterVersion)
            .where(AdapterVersion.is_active)
            .values(is_active=False, status=AdapterStatus.retired, retired_at=utcnow())
        )
        session.flush()
    base = BaseModelVersion(
        path=str(path.resolve()),
        checksum=folder_sha256(path),
        is_active=True,
        parent_id=previous.id if previous else None,
        job_id=job_id,
        metrics=metrics or {},
    )
    session.add(base)
    session.flush()
    audit.record(
        session,
        actor=actor,
        entity="base_model",
        entity_id=base.id,
        action="activated",
        to_status="active",
        path=base.path,
        replaced=previous.id if previous else None,
    )
    return base


def activate_adapter(session: Session, adapter: AdapterVersion, *, actor: str) -> None:
    """Make ``adapter`` the serving one; the previous active adapter is retired."""
    now = utcnow()
    previous = active_adapter(session)
    if previous is not None and previous.id != adapter.id:
        previous.is_active = False
        previous.status = AdapterStatus.retired
        previous.retired_at = now
        session.flush()  # the partial unique index allows one active row at a time
        audit.record(
            session,
            actor=actor,
            entity="adapter",
            entity_id=previous.id,
            action="retired",
            from_status=AdapterStatus.active,
            to_status=AdapterStatus.retired,
        )
    adapter.is_active = True
    adapter.status = AdapterStatus.active
    adapter.activated_at = now
    audit.record(
        session,
        actor=actor,
        entity="adapter",
        entity_id=adapter.id,
        action="activated",
        from_status=AdapterStatus.ready,
        to_status=AdapterStatus.active,
    )
