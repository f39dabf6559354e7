"""Deleting model files that no longer reflect every deletion, so that no rollback can bring a
forgotten user back: every adapter but the active one, every base but the active one, and
folders nothing in the registry names (left by a crashed attempt)."""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from service.core.db.clock import db_now
from service.core.db.models import (
    AdapterStatus,
    AdapterVersion,
    BaseModelVersion,
    JobStatus,
    UnlearningJob,
    utcnow,
)
from service.core.db.session import session_scope
from service.core.settings import Settings
from service.domain import audit

log = logging.getLogger(__name__)


def _remove(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def purge_superseded(settings: Settings, *, actor: str = "purge") -> list[str]:
    """Delete superseded adapters' and bases' folders; returns what was deleted."""
    removed: list[str] = []
    with session_scope(settings.db_url) as session:
        adapters = session.scalars(
            select(AdapterVersion).where(
                AdapterVersion.is_active.is_(False), AdapterVersion.status != AdapterStatus.purged
            )
        ).all()
        for adapter in adapters:
            _remove(adapter.path)  # files first: a failed commit leaves them gone, not kept
            previous = adapter.status
            adapter.status = AdapterStatus.purged
            removed.append(adapter.path)
            audit.record(
                session,
                actor=actor,
                entity="adapter",
                entity_id=adapter.id,
                action="purged",
                from_status=previous,
                to_status=AdapterStatus.purged,
            )
        bases = session.scalars(
            select(BaseModelVersion).where(
                BaseModelVersion.is_active.is_(False), BaseModelVersion.purged_at.is_(None)
            )
        ).all()
        for base in bases:
            _remove(base.path)
            base.purged_at = utcnow()
            removed.append(base.path)
            audit.record(
                session, actor=actor, entity="base_model", entity_id=base.id, action="purged"
            )
    removed += purge_orphans(settings)
    for path in removed:
        log.info("purged %s", path)
    return removed


# A job's output folders: adapters `job-<id>-attempt-<n>`, consolidated bases
# `base-job-<id>-attempt-<n>` (worker/runner.py names them).
_JOB_FOLDER = re.compile(r"^(?:base-)?job-(\d+)-attempt-\d+")


def _leased_jobs(session) -> set[int]:
    """Jobs a worker still holds (lease not expired, by the database's clock): their folders are
    written before the gate runs and must survive however long it takes."""
    return set(
        session.scalars(
            select(UnlearningJob.id).where(
                UnlearningJob.status == JobStatus.running,
                UnlearningJob.lease_expires_at > db_now(session),
            )
        )
    )


def purge_orphans(settings: Settings) -> list[str]:
    """Folders in the registry that no live row names, older than the grace period (a crashed
    attempt's output, or an atomic write's leftover temporary folder), except those of jobs
    that still hold a lease."""
    roots = [settings.adapter_dir, settings.data_dir / "models"]
    with session_scope(settings.db_url, write=False) as session:
        leased = _leased_jobs(session)
        live = {
            str(Path(p).resolve())
            for p in session.scalars(
                select(AdapterVersion.path).where(AdapterVersion.status != AdapterStatus.purged)
            )
        }
        live |= {
            str(Path(p).resolve())
            for p in session.scalars(
                select(BaseModelVersion.path).where(BaseModelVersion.purged_at.is_(None))
            )
        }
    live.add(str(settings.base_model_path.resolve()))  # bootstrap's folder before registration
    cutoff = time.time() - settings.orphan_grace_seconds
    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            if not folder.is_dir() or str(folder.resolve()) in live:
                continue
            job = _JOB_FOLDER.match(folder.name)
            if job is not None and int(job.group(1)) in leased:
                continue  # a live job's output, not yet registered
            if folder.stat().st_mtime < cutoff:
                _remove(folder)
                removed.append(str(folder))
    return removed
