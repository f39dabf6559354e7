"""The audit log: one append-only row per state change, written in the changing transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.core.db.models import AuditEntry


def record(
    session: Session,
    *,
    actor: str,
    entity: str,
    entity_id: str | int,
    action: str,
    from_status: str | None = None,
    to_status: str | None = None,
    **detail: Any,
) -> None:
    session.add(
        AuditEntry(
            actor=actor,
            entity=entity,
            entity_id=str(entity_id),
            action=action,
            from_status=from_status,
            to_status=to_status,
            detail=detail,
        )
    )
