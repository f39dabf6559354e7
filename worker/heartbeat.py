"""Workers seen: each worker keeps a row fresh while it lives (the admin queue view lists them)."""

from __future__ import annotations

import logging
import threading

import torch
from sqlalchemy import update

from service.core.db.models import WorkerHeartbeat, utcnow
from service.core.db.session import session_scope
from service.core.settings import Settings

log = logging.getLogger(__name__)
_stop = threading.Event()


def beat(
    settings: Settings,
    name: str,
    queues: str = "",
    running_job_id: int | None = None,
    *,
    job_known: bool = False,
) -> None:
    """Upsert this worker's row (``job_known``: also set ``running_job_id``)."""
    values = {"last_seen": utcnow()}
    if queues:
        values["queues"] = queues
    if job_known:
        values["running_job_id"] = running_job_id
    with session_scope(settings.db_url) as session:
        updated = session.execute(
            update(WorkerHeartbeat).where(WorkerHeartbeat.name == name).values(**values)
        ).rowcount
        if not updated:
            device = "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
            session.add(
                WorkerHeartbeat(
                    name=name,
                    queues=queues,
                    device=device,
                    running_job_id=running_job_id,
                    last_seen=values["last_seen"],
                )
            )


def start_heartbeat(settings: Settings, name: str, queues: str, every: float = 10.0) -> None:
    def loop() -> None:
        while not _stop.is_set():
            try:
                beat(settings, name, queues)
            except Exception as exc:  # the database may be restarting; try again later
                log.warning("worker heartbeat failed: %s", exc)
            _stop.wait(every)

    _stop.clear()
    threading.Thread(target=loop, name="heartbeat", daemon=True).start()


def stop_heartbeat() -> None:
    _stop.set()
