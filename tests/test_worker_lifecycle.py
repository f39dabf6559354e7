"""What happens across jobs: a failed gate and its retry, a second batch warm-started from the
first adapter (which is then purged), and a consolidation that retrains the base. The runner is
called in-process here; the Celery delivery itself is covered by the e2e and fault tests."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from e2urec.adapter_files import read_adapter
from e2urec.data import Catalog
from service.api.main import create_app
from service.core.db.models import (
    AdapterStatus,
    AdapterVersion,
    BaseModelVersion,
    Certificate,
    ForgetRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
)
from service.core.db.session import session_scope
from service.domain.forget import request_forget
from service.domain.jobs import BatchPolicy, cut_batch, request_consolidation
from tests.service_support import ADMIN_KEY, RECOMMEND_KEY, auth
from tests.worker_world import forget_loss, fresh_world
from worker.runner import run_next

pytestmark = pytest.mark.slow


def _batch(settings, *users: int) -> int:
    with session_scope(settings.db_url) as s:
        for u in users:
            request_forget(s, str(u), salt=settings.salt(), actor="test")
    with session_scope(settings.db_url) as s:
        return cut_batch(s, BatchPolicy(1, 0, 100), force=True).id


def _row(settings, model, key):
    with session_scope(settings.db_url, write=False) as s:
        row = s.get(model, key)
        s.expunge(row)
        return row


def test_a_failed_gate_keeps_the_old_model_and_a_retry_completes(service_base, tmp_path):
    with fresh_world(service_base, tmp_path, unlearn_min_steps=4, unlearn_max_epochs=2) as world:
        # no adapter can pass: AUC would have to rise by a full point. Settings refuse a negative
        # bound from users; model_copy skips validation, which is what a test of the gate wants.
        strict = world.model_copy(update={"gate_max_auc_drop": -1.0})
        job_id = _batch(strict, 5, 17)
        assert "quality gate" in run_next(strict, "w")
        job = _row(strict, UnlearningJob, job_id)
        assert job.status == JobStatus.failed and "validation AUC" in job.error
        assert job.metrics["gate"]["valid_auc_after"] > 0  # the failed metrics are kept
        with session_scope(strict.db_url, write=False) as s:
            assert set(s.scalars(select(ForgetRequest.status))) == {RequestStatus.failed}
            assert s.scalar(select(AdapterVersion.id)) is None
        assert not any(strict.adapter_dir.iterdir())  # the rejected files are gone
        with TestClient(create_app(strict)) as client:
            # still quarantined: a failed request keeps the user's data out of serving
            r = client.get("/recommend", params={"user_id": "5"}, headers=auth(RECOMMEND_KEY))
            assert r.json()["personalized"] is False
            r = client.post(f"/admin/jobs/{job_id}/retry", headers=auth(ADMIN_KEY))
            assert r.status_code == 202, r.text
            retry_id = r.json()["id"]
            again = client.post(f"/admin/jobs/{retry_id}/retry", headers=auth(ADMIN_KEY))
            assert again.status_code == 409  # only a failed job can be retried

        relaxed = strict.model_copy(update={"gate_max_auc_drop": 1.0, "gate_mia_band": 1.0})
        assert "serving" in run_next(relaxed, "w")
        assert _row(relaxed, UnlearningJob, retry_id).status == JobStatus.succeeded
        with session_scope(relaxed.db_url, write=False) as s:
            assert set(s.scalars(select(ForgetRequest.status))) == {RequestStatus.completed}


def test_a_second_batch_builds_on_the_first_and_the_first_adapter_is_purged(service_base, tmp_path):
    catalog = Catalog.of(service_base.dataset)
    first_users = {5, 17, 33}
    first_samples = service_base.samples(first_users, trained=True)
    with fresh_world(service_base, tmp_path) as settings:
        _batch(settings, *first_users)
        assert "serving" in run_next(settings, "w")
        first = _row(settings, AdapterVersion, 1)
        first_path = Path(first.path)
        _batch(settings, 41, 52)
        assert "serving" in run_next(settings, "w")
        second = _row(settings, AdapterVersion, 2)
        assert second.parent_id == 1 and second.metrics["warm_start_from"] == 1
        assert second.is_active and second.forgotten_users == 5
        first = _row(settings, AdapterVersion, 1)
        assert first.status == AdapterStatus.purged and not first_path.exists()

    base_loss = forget_loss(service_base.base, None, catalog, first_samples)
    second_loss = forget_loss(service_base.base, second.path, catalog, first_samples)
    assert second_loss > base_loss  # the first batch stays forgotten under the second adapter


def test_consolidation_retrains_the_base_without_forgotten_users(service_base, tmp_path):
    # A consolidation purges the superseded base's files: give it a copy, not the shared base
    # the other tests load.
    base_copy = tmp_path / "base-copy"
    shutil.copytree(service_base.base, base_copy)
    own_base = dataclasses.replace(service_base, base=base_copy)
    fast = {"unlearn_min_steps": 4, "unlearn_max_epochs": 2, "gate_mia_band": 1.0}
    # the first job also runs with the worker's memory switch on and an all-linear student, as
    # an operator would set them for a real LLM
    operator = {"unlearn_activation_checkpointing": True, "unlearn_student_modules": "all-linear"}
    with fresh_world(own_base, tmp_path, **operator, **fast) as settings:
        _batch(settings, 5, 17)
        run_next(settings, "w")
        adapter = _row(settings, AdapterVersion, 1)
        files = read_adapter(adapter.path)
        config = files.metadata["config"]
        assert config["activation_checkpointing"] is True
        assert config["target_modules"] == "all-linear"
        assert config["lora_dropout"] == 0.0  # as the measured all-linear row (2x a step else)
        adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in files.state_dict}
        assert {"q_proj", "v_proj", "o_proj", "down_proj"} <= adapted  # not only q/v
        with session_scope(settings.db_url) as s:  # waiting when the consolidation starts
            request_forget(s, "33", salt=settings.salt(), actor="test")
        with session_scope(settings.db_url) as s:
            job_id = request_consolidation(s, actor="test").id
            assert request_consolidation(s, actor="test").id == job_id  # one at a time
        outcome = run_next(settings, "w")
        assert "retrained" in outcome, outcome
        with session_scope(settings.db_url, write=False) as s:
            bases = s.scalars(select(BaseModelVersion).order_by(BaseModelVersion.id)).all()
            assert [b.is_active for b in bases] == [False, True]
            assert bases[0].purged_at is not None and not Path(bases[0].path).exists()
            assert bases[1].metrics["users"] == 60 - 3  # two deleted, one left out
            waiting = s.scalars(
                select(ForgetRequest).where(ForgetRequest.status == RequestStatus.completed)
            ).all()
            assert len(waiting) == 3  # the waiting request completed by the retraining
            cert = s.scalars(select(Certificate).order_by(Certificate.id.desc())).first()
            assert cert.adapter_version_id is None and cert.base_model_id == bases[1].id
            old = s.get(AdapterVersion, adapter.id)
            assert old.status == AdapterStatus.purged and not old.is_active
        with TestClient(create_app(settings)) as client:
            ready = client.get("/ready").json()
            assert ready["model_version"] == "base-2"  # adapters restart from empty
            view = client.get("/admin/queue", headers=auth(ADMIN_KEY)).json()
            assert view["active_base"] == 2 and view["active_adapter"] is None


def test_trained_users_are_the_ones_whose_request_trains_an_adapter(service_base, tmp_path):
    """`e2urec-service trained-users` (the README's example user) names users with samples in
    the base's training window, never audit users, and drops a user once they ask to be
    forgotten."""
    from service.core.security import is_audit_user
    from service.domain.bootstrap import trained_users

    with fresh_world(service_base, tmp_path) as settings:
        with session_scope(settings.db_url, write=False) as s:
            users = trained_users(s, settings, limit=5)
        assert len(users) == 5
        ids = {int(u) for u in users}
        trained = {s.user_id for s in service_base.samples(ids, trained=True)}
        assert trained == ids  # every one has samples the base trained on
        fraction = service_base.recipe["audit_fraction"]
        assert not any(is_audit_user(settings.salt(), u, fraction) for u in ids)
        with session_scope(settings.db_url) as s:
            request_forget(s, users[0], salt=settings.salt(), actor="test")
        with session_scope(settings.db_url, write=False) as s:
            assert users[0] not in trained_users(s, settings, limit=50)
