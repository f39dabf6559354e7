"""Everything one serving process holds: the catalogue, the candidate index, the inference
engine and the thread that keeps the engine on the registry's active model."""

from __future__ import annotations

import logging
import threading
import time

from e2urec.backbones import Backbone
from e2urec.data import Item
from service.core.db.session import session_scope
from service.core.security import user_hash
from service.core.settings import Settings
from service.domain.catalog import NoCatalog, catalog_info, item_external_ids, load_items
from service.serving.candidates import CandidateIndex
from service.serving.engine import InferenceEngine, ModelVersion
from service.serving.metrics import Metrics
from service.serving.model_sync import ModelSync

log = logging.getLogger(__name__)


class Serving:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.items: dict[int, Item] = {}
        self.item_external: dict[int, str] = {}  # internal id -> external id
        self.item_internal: dict[str, int] = {}  # external id -> internal id
        self.domain = "movie"
        self.index: CandidateIndex | None = None
        self.catalog_error: str | None = "not loaded yet"
        self.salt = settings.salt()
        self.models = ModelSync(settings, metrics, self._make_engine)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def engine(self) -> InferenceEngine | None:
        return self.models.engine

    def hash_user(self, external_id: str) -> str:
        return user_hash(self.salt, external_id)

    def _make_engine(self, backbone: Backbone, version: ModelVersion) -> InferenceEngine:
        s = self.settings
        return InferenceEngine(
            backbone,
            version,
            max_batch_rows=s.max_batch_rows,
            max_wait_ms=s.max_wait_ms,
            prefix_reuse=s.prefix_reuse,
            batching=s.batching,
            probe_tolerance=s.probe_tolerance,
            on_batch=self.metrics.on_batch,
            on_dropped=self.metrics.engine_dropped.inc,
        ).start()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.load_catalog()
        self.models.start()
        self._refresher = threading.Thread(target=self._refresh, name="catalog", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        self.models.stop()
        if self.engine is not None:
            self.engine.stop()

    def load_catalog(self) -> None:
        """(Re)build the items and the candidate index; the old ones serve until this is done."""
        try:
            with session_scope(self.settings.db_url, write=False) as session:
                info = catalog_info(session)
                items = load_items(session)
                external = item_external_ids(session)
                index = CandidateIndex.build(session)
        except NoCatalog as exc:
            self.catalog_error = str(exc)
            return
        self.items, self.domain, self.index = items, info["domain"], index
        self.item_external = external
        self.item_internal = {e: i for i, e in external.items()}
        self.catalog_error = None

    def _refresh(self) -> None:
        while not self._stop.wait(self.settings.catalog_refresh_seconds):
            started = time.perf_counter()
            try:
                self.load_catalog()
            except Exception as exc:
                log.warning("catalogue refresh failed, the old index keeps serving: %s", exc)
            else:
                log.info("catalogue refreshed in %.2fs", time.perf_counter() - started)

    def readiness(self) -> dict[str, str | None]:
        """None for each part that is ready, else why not (texts safe for anonymous callers:
        they name versions, never internal errors; those are in the log and the audit)."""
        target = self.models.target
        if target is None:
            model = (
                "the model registry could not be read yet"
                if self.models.last_error
                else "no base model registered: run e2urec-service bootstrap"
            )
        else:
            model = self.models.behind(target.base, target.adapter)
        return {"catalog": self.catalog_error, "model": model}
