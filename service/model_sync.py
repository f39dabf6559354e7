"""Keeps a serving process on the registry's active model: a Redis pub/sub notice wakes it at
once, a database poll catches anything the notice missed (Redis down, message lost).

Loading (reading files, verifying checksums) happens on this thread, off the request path; only
the final switch runs on the engine's loop, between two batches.
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
from service import audit
from service.db.models import AdapterVersion, BaseModel
from service.db.session import session_scope
from service.engine import InferenceEngine, ModelVersion, SwapError
from service.metrics import Metrics
from service.registry import active_adapter, active_base
from service.settings import Settings

log = logging.getLogger(__name__)


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def publish_model_change(settings: Settings, version: str) -> bool:
    """Tell every serving process to look at the registry now (best effort: they poll too)."""
    if not settings.redis_url:
        return False
    import redis

    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        client.publish(settings.model_channel, version)
        client.close()
        return True
    except redis.RedisError as exc:
        log.warning("could not publish the model change (serving will poll): %s", exc)
        return False


class ModelSync:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        make_engine: Callable[..., InferenceEngine],
        on_engine: Callable[[InferenceEngine], None],
    ):
        self.settings = settings
        self.metrics = metrics
        self.make_engine = make_engine  # (backbone, version) -> a started engine
        self.on_engine = on_engine
        self.engine: InferenceEngine | None = None
        self.failed: dict[int, str] = {}  # adapter versions this process could not load
        self.last_error: str | None = None
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
            self._wake.wait(self.settings.adapter_poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync_once()
                self.last_error = None
            except Exception as exc:  # database away: keep serving what we have, retry later
                self.last_error = str(exc)
                log.warning("model sync failed: %s", exc)

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
            if base is None:
                return None
            if self.engine is None or self.engine.version.base != base.id:
                self._load_base(base)
            want = adapter.id if adapter is not None else None
            if self.engine.version.adapter != want:
                if adapter is None:
                    self.engine.swap_adapter(None, ModelVersion(base.id, None)).result()
                elif adapter.id not in self.failed:
                    self._load_adapter(adapter)
            self._publish_gauges()
            return self.engine.version

    def _load_base(self, base: BaseModel) -> None:
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
            self.on_engine(self.engine)
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
            self.failed[adapter.id] = str(exc)
            self.metrics.swaps.labels("failed").inc()
            log.error(
                "adapter %s not loaded, %s keeps serving: %s",
                adapter.id,
                self.engine.version.label,
                exc,
            )
            self._record(adapter.id, "adapter", "load_failed", error=str(exc))
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
