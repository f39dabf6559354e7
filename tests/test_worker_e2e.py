"""Forget requests through a real API, a real Celery worker and beat, Redis and PostgreSQL, until
the serving engine uses the adapter that forgets them and their data is gone."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from e2urec.data import Catalog
from service.api.main import create_app
from service.core.db.models import (
    AdapterVersion,
    AuditEntry,
    Certificate,
    ForgetRequest,
    Interaction,
    UnlearningJob,
    User,
)
from service.core.db.session import session_scope
from service.domain.receipts import verify
from tests.service_support import (
    ADMIN_KEY,
    FORGET_KEY,
    RECOMMEND_KEY,
    LiveServer,
    auth,
    wait_for,
)
from tests.worker_support import CeleryProcess
from tests.worker_world import forget_loss, fresh_world

pytestmark = pytest.mark.slow
FORGET = [5, 17, 33]


def test_forget_requests_become_a_serving_adapter_and_the_data_is_gone(service_base, tmp_path):
    catalog = Catalog.of(service_base.dataset)
    forget_samples = service_base.samples(set(FORGET), trained=True)
    assert forget_samples
    with fresh_world(service_base, tmp_path) as settings:
        url = settings.db_url
        stages: set[str] = set()
        with (
            LiveServer(create_app(settings)) as api,
            CeleryProcess(settings, "worker", tmp_path) as worker,
            CeleryProcess(settings, "beat", tmp_path),
        ):
            c = httpx.Client(base_url=api.url, timeout=30)
            ids = []
            for user in FORGET:
                r = c.post(f"/forget/{user}", headers=auth(FORGET_KEY))
                assert r.status_code == 202, r.text
                ids.append(r.json()["request_id"])
            before = c.get("/ready").json()["model_version"]

            def done():
                view = c.get("/admin/queue", headers=auth(ADMIN_KEY)).json()
                if view["running_job"]:
                    stages.add(view["running_job"]["stage"])
                states = [
                    c.get(f"/forget/requests/{i}", headers=auth(FORGET_KEY)).json()["status"]
                    for i in ids
                ]
                assert "failed" not in states, (states, worker.output())
                return all(s == "completed" for s in states)

            wait_for(done, 600, "the three requests to complete")
            status = c.get(f"/forget/requests/{ids[0]}", headers=auth(FORGET_KEY)).json()
            adapter_id = status["adapter_version"]
            wait_for(
                lambda: c.get("/ready").json()["model_version"] == f"base-1/adapter-{adapter_id}",
                30,
                "the serving engine to swap to the new adapter",
            )
            r = c.get("/recommend", params={"user_id": "1", "k": 3}, headers=auth(RECOMMEND_KEY))
            assert r.json()["model_version"]["adapter"] == adapter_id
            cert = c.get(f"/forget/requests/{ids[0]}/certificate", headers=auth(FORGET_KEY))
            assert cert.status_code == 200 and cert.json()["adapter_version"] == adapter_id
            assert cert.json()["interactions_deleted"] > 0
            assert "mia_auc_after" in cert.json()["gate"]
            receipts = cert.json()["receipts"]  # signed, and verifiable with the published key
            key = c.get("/certificates/public-key").json()["public_key"]
            assert [verify(r, key)["kind"] for r in receipts] == ["unlearned"]
            view = c.get("/admin/queue", headers=auth(ADMIN_KEY)).json()
            metrics = c.get("/metrics").text
            again = c.post(f"/forget/{FORGET[0]}", headers=auth(FORGET_KEY))

        assert before == "base-1"
        assert stages & {"augment", "teachers", "unlearn", "evaluate"}, (
            stages
        )  # progress was visible
        job = view["recent_jobs"][0]
        assert job["status"] == "succeeded" and job["request_count"] == 3
        assert job["duration_seconds"] > 0 and job["metrics"]["gate"]["forget_samples"] > 0
        assert view["active_adapter"]["id"] == adapter_id and view["workers"]
        assert "e2urec_job_duration_seconds_count 1.0" in metrics
        assert again.status_code == 200 and again.json()["request_id"] == ids[0]  # by the hash

        with session_scope(url, write=False) as s:
            assert s.scalar(select(func.count()).select_from(UnlearningJob)) == 1
            assert s.scalar(select(func.count()).select_from(AdapterVersion)) == 1
            assert not s.scalar(
                select(func.count()).select_from(Interaction).where(Interaction.user_id.in_(FORGET))
            )
            assert not s.scalar(select(func.count()).select_from(User).where(User.id.in_(FORGET)))
            requests = s.scalars(select(ForgetRequest)).all()
            assert all(r.user_id is None and len(r.user_hash) == 64 for r in requests)
            assert s.scalar(select(func.count()).select_from(Certificate)) == 3
            completed = s.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.entity == "forget_request", AuditEntry.to_status == "completed")
            )
            assert completed == 3
            adapter = s.get(AdapterVersion, adapter_id)
            path, gate = adapter.path, adapter.metrics["gate"]

    # No log of the worker or beat names a forgotten user by their raw id.
    for log in tmp_path.glob("*.log"):
        text = log.read_text(errors="replace")
        for user in FORGET:
            for raw in (f"/forget/{user} ", f"user_id={user}&", f"user {user} ", f"'{user}'"):
                assert raw not in text, (log.name, raw)

    # The forget set looks less familiar to the unlearned model, as in the benchmark.
    before_loss = forget_loss(service_base.base, None, catalog, forget_samples)
    after_loss = forget_loss(service_base.base, path, catalog, forget_samples)
    assert after_loss > before_loss, (before_loss, after_loss, gate)
    assert gate["forget_logloss_after"] > gate["forget_logloss_before"]
