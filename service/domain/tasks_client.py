"""Sending work to the Celery worker by task name: the service never imports the worker."""

from __future__ import annotations

import logging
from functools import lru_cache

from service.core.settings import Settings

log = logging.getLogger(__name__)

TICK = "e2urec.tick"
RUN_JOB = "e2urec.run_job"


@lru_cache(maxsize=4)
def _client(broker: str):
    from celery import Celery

    client = Celery("e2urec-client", broker=broker)
    # Fail fast: a request must not hang because the broker is away (the beat tick catches up).
    client.conf.broker_connection_timeout = 2
    client.conf.broker_connection_max_retries = 0
    client.conf.broker_transport_options = {"max_retries": 0}
    return client


def send_tick(settings: Settings, *, send_all: bool = False) -> bool:
    """Ask a worker to cut batches and reconcile now (best effort)."""
    return _send(settings, TICK, [send_all], settings.queue_control)


def send_run_job(settings: Settings, job_id: int) -> bool:
    return _send(settings, RUN_JOB, [job_id], settings.queue_unlearning)


def _send(settings: Settings, name: str, args: list, queue: str) -> bool:
    if not settings.celery_broker:
        return False
    try:
        _client(settings.celery_broker).send_task(name, args=args, queue=queue)
        return True
    except Exception as exc:  # broker down: the database still holds the work
        log.warning("could not send %s to the broker (%s); the periodic tick will", name, exc)
        return False
