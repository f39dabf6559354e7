"""Keeps a serving process on the registry's active model: a Redis pub/sub notice wakes it at
once, a database poll catches anything the notice missed (Redis down, message lost).

Loading (reading files, verifying checksums) happens on this thread, off the request path; only
the final switch runs on the engine's loop, between two batches.

Fail closed: the engine may hold an older version (a fresh process has only the base; a swap can
fail), but only the registry's active version may answer personalised requests. While this
process cannot load it, :meth:`ModelSync.behind` says why, ``/ready`` is 503 and ``/recommend``
answers without personalisation; the load is retried with exponential backoff, each failure is
counted and audited. The poll thread is also the engine's supervisor: a dead loop is restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from e2urec.adapter_files import AdapterFileError, read_adapter
from e2urec.atomic import folder_sha256
from e2urec.model_store import load_model
from service.core.db.models import AdapterVersion, BaseModelVersion
from service.core.db.session import session_scope
from service.core.settings import Settings
from service.domain import audit
from service.domain.registry import active_adapter, active_base
from service.serving.adapter_slot import ModelVersion, SwapError
from service.serving.engine import InferenceEngine
from service.serving.metrics import Metrics

log = logging.getLogger(__name__)


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ModelSync:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        make_engine: Callable[..., InferenceEngine],
    ):
        self.settings = settings
        self.metrics = metrics
        self.make_engine = make_engine  # (backbone, version) -> a started engine
        self.engine: InferenceEngine | None = None
        self.target: ModelVersion | None = None  # what the registry said must serve, last read
        self.last_error: str | None = None  # detail for logs and operators, never for clients
        # ("base" | "adapter", id) -> (failed attempts, monotonic time of the next try)
        self._retry: dict[tuple[str, int], tuple[int, float]] = {}
        self.process = process_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- threads -----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.sync_once()
        except Exception as exc:  # the API still starts: /ready says why it is not ready
            self.last_error = str(exc)
            log.exception("initial model load failed")
        self._threads = [threading.Thread(target=self._poll, name="model-poll", daemon=True)]
        if self.settings.redis_url:
            self._threads.append(
                threading.Thread(target=self._listen, name="model-notices", daemon=True)
            )
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stop.is_set():
                return
            self.supervise()
            try:
                self.sync_once()
            except Exception as exc:  # database away: /recommend checks the registry itself
                self.last_error = str(exc)
                log.warning("model sync failed: %s", exc)

    def _next_wait(self) -> float:
        """The poll interval, or sooner when a failed load is due for its retry."""
        wait = self.settings.adapter_poll_seconds
        now = time.monotonic()
        for _, at in self._retry.values():
            wait = min(wait, max(at - now, 0.01))
        return wait

    def supervise(self) -> None:
        """Restart the engine's loop if it died (see InferenceEngine.ensure_running)."""
        if self.engine is not None and self.engine.ensure_running():
            self.metrics.engine_restarts.inc()
            self._record(0, "engine", "restarted", deaths=self.engine.deaths)

    def wake(self) -> None:
        self._wake.set()

    # -- fail closed ---------------------------------------------------------------------------
    def behind(self, base: int | None, adapter: int | None) -> str | None:
        """Why this process must not answer personalised requests for the registry's active
        version ``(base, adapter)``, or None when its engine serves exactly that version. The
        text is for clients: it names versions, never internal errors."""
        engine = self.engine
        if base is None:
            return "no base model is registered: run e2urec-service bootstrap"
        if engine is None:
            return f"base model {base} is not loaded yet"
        if not engine.running:
            return "the inference engine is restarting"
        if engine.version == ModelVersion(base, adapter):
            return None
        want = ModelVersion(base, adapter).label
        failed = self._retry.get(("adapter", adapter) if adapter else ("base", base))
        if failed is not None:  # the retry has its own schedule (backoff)
            return f"{want} could not be loaded yet ({failed[0]} attempts); retrying"
        self._wake.set()  # the registry moved on: load it now rather than at the next poll
        return f"{want} is being loaded"

    def _failed(self, kind: str, entity_id: int, exc: Exception) -> None:
        attempts = self._retry.get((kind, entity_id), (0, 0.0))[0] + 1
        delay = min(self.settings.adapter_poll_seconds * 2 ** (attempts - 1), 300.0)
        self._retry[(kind, entity_id)] = (attempts, time.monotonic() + delay)
        self.last_error = str(exc)
        self.metrics.swaps.labels("failed").inc()
        log.error(
            "%s %s not loaded (attempt %d, next in %.1fs); personalised answers are off until "
            "it is: %s",
            kind,
            entity_id,
            attempts,
            delay,
            exc,
        )
        self._record(
            entity_id,
            "adapter" if kind == "adapter" else "base_model",
            "load_failed",
            error=str(exc),
            attempt=attempts,
            retry_in_seconds=round(delay, 3),
        )

    def _due(self, kind: str, entity_id: int) -> bool:
        retry = self._retry.get((kind, entity_id))
        return retry is None or time.monotonic() >= retry[1]

    def _listen(self) -> None:
        import redis

        backoff = 0.5
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.settings.model_channel)
                backoff = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._wake.set()
                pubsub.close()
                client.close()
            except redis.RedisError as exc:
                log.info("model notices unavailable (%s); polling the database instead", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    # -- one synchronisation ------------------------------------------------------------------
    def sync_once(self) -> ModelVersion | None:
        """Bring this process to the registry's active base and adapter."""
        with self._lock:
            url = self.settings.db_url
            with session_scope(url, write=False) as session:
                base = active_base(session)
                adapter = active_adapter(session) if base is not None else None
                if adapter is not None and adapter.base_model_id != base.id:
                    adapter = None  # an adapter of an older base never serves a newer one
                if base is not None:
                    session.expunge(base)
                if adapter is not None:
                    session.expunge(adapter)
            want = adapter.id if adapter is not None else None
            self.target = ModelVersion(base.id, want) if base is not None else None
            try:
                if base is None:
                    return None
                if self.engine is None or self.engine.version.base != base.id:
                    if not self._due("base", base.id):
                        return self.engine.version if self.engine else None
                    try:
                        self._load_base(base)
                    except Exception as exc:
                        self._failed("base", base.id, exc)
                        return self.engine.version if self.engine else None
                    self._retry.pop(("base", base.id), None)
                if self.engine.version.adapter != want:
                    if adapter is None:
                        self.engine.swap_adapter(None, ModelVersion(base.id, None)).result()
                    elif self._due("adapter", adapter.id):
                        self._load_adapter(adapter)
                if self.engine.version == self.target:
                    self.last_error = None
                    self._retry.clear()  # older failures no longer matter
                return self.engine.version
            finally:
                self._publish_gauges()

    def _load_base(self, base: BaseModelVersion) -> None:
        started = time.perf_counter()
        actual = folder_sha256(base.path)
        if actual != base.checksum:
            raise RuntimeError(
                f"base model {base.id} at {base.path} does not match its checksum "
                f"({actual[:12]} != {base.checksum[:12]}); refusing to serve it"
            )
        backbone, _ = load_model(base.path, device=self.settings.device)
        version = ModelVersion(base.id, None)
        if self.engine is None:
            self.engine = self.make_engine(backbone, version)
        else:
            report = self.engine.swap_base(backbone, version).result()
            self.metrics.swap_pause.observe(report.seconds)
        self.metrics.swaps.labels("base").inc()
        self.metrics.swap_load.observe(time.perf_counter() - started)
        self._record(base.id, "base_model", "serving", seconds=time.perf_counter() - started)

    def _load_adapter(self, adapter: AdapterVersion) -> None:
        version = ModelVersion(adapter.base_model_id, adapter.id)
        started = time.perf_counter()
        try:
            files = read_adapter(adapter.path, adapter.checksum)
            if adapter.probes:
                files.metadata["probes"] = adapter.probes
            load_seconds = time.perf_counter() - started
            report = self.engine.swap_adapter(files, version).result()
        except (AdapterFileError, SwapError, OSError) as exc:
            self._failed("adapter", adapter.id, exc)
            return
        self.metrics.swaps.labels("adapter").inc()
        self.metrics.swap_load.observe(load_seconds)
        self.metrics.swap_pause.observe(report.seconds)
        self._record(
            adapter.id,
            "adapter",
            "serving",
            load_seconds=round(load_seconds, 4),
            pause_seconds=round(report.seconds, 4),
            probe_error=report.max_probe_error,
        )

    def _record(self, entity_id: int, entity: str, action: str, **detail) -> None:
        try:
            with session_scope(self.settings.db_url) as session:
                audit.record(
                    session,
                    actor=self.process,
                    entity=entity,
                    entity_id=entity_id,
                    action=action,
                    **detail,
                )
        except Exception as exc:  # the audit row is best effort; serving is not
            log.warning("could not record %s %s: %s", entity, action, exc)

    def _publish_gauges(self) -> None:
        if self.engine is not None:
            self.metrics.active_base.set(self.engine.version.base or 0)
            self.metrics.active_adapter.set(self.engine.version.adapter or 0)
        behind = self.target is not None and (
            self.engine is None or self.engine.version != self.target
        )
        self.metrics.behind_registry.set(1 if behind else 0)
