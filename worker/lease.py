"""A running job's lease: renewed in the background, carrying the job's live progress."""

from __future__ import annotations

import logging
import threading

from service.core.db.session import session_scope
from service.core.settings import Settings
from service.domain.jobs import LeaseLost, renew_lease

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, settings: Settings, job_id: int, owner: str):
        self.settings = settings
        self.job_id = job_id
        self.owner = owner
        # Renew often enough that a few failed renewals still leave the lease alive, and so
        # that operators see progress within seconds.
        self.every = min(settings.lease_seconds / 3, 2.0)
        self.lost = False
        self._progress: tuple[str, int, int, float | None] = ("starting", 0, 0, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def progress(self, stage: str, step: int, total: int, loss: float | None) -> None:
        """Record progress (written with the next renewal); stops the job if the lease is gone."""
        if self.lost:
            raise LeaseLost(f"job {self.job_id}: lease lost, another worker took it over")
        self._progress = (stage, step, total, loss)

    def renew_now(self) -> None:
        stage, step, total, loss = self._progress
        with session_scope(self.settings.db_url) as session:
            ok = renew_lease(
                session,
                self.job_id,
                self.owner,
                self.settings.lease_seconds,
                stage=stage,
                step=step,
                total=total,
                loss=loss,
            )
        if not ok:
            self.lost = True

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.renew_now()
            except Exception as exc:  # database briefly away: the lease has slack
                log.warning("lease renewal for job %s failed: %s", self.job_id, exc)
            if self.lost:
                log.error("job %s: lease lost; stopping at the next step", self.job_id)
                return
