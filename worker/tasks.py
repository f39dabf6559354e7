"""The Celery tasks. They carry only ids; the database says what to do."""

from __future__ import annotations

import logging

from service.core.settings import get_settings
from service.domain.tasks_client import RUN_JOB, TICK
from worker.app import app

log = logging.getLogger(__name__)


@app.task(name=TICK, ignore_result=True)
def tick(send_all: bool = False) -> dict:
    """Cut due batches, re-send lost or stale job messages, purge superseded files."""
    from worker.reconcile import reconcile

    return reconcile(get_settings(), send_all=send_all)


@app.task(name=RUN_JOB, bind=True, ignore_result=True, acks_late=True)
def run_job(self, job_id: int) -> str:
    from worker.runner import run_next

    return run_next(get_settings(), self.request.hostname or "worker", hint=job_id)
