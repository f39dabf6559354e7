"""Faults: a worker SIGKILLed mid-job, a crash between commit and enqueue, a duplicate task
message, Redis restarted. Every request must end completed exactly once, with one adapter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.core.db.models import (
    AdapterVersion,
    AuditEntry,
    ForgetRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
)
from service.core.db.session import session_scope
from service.domain.forget import request_forget
from service.domain.jobs import BatchPolicy, cut_batch
from service.domain.tasks_client import send_run_job
from tests.service_support import free_port, wait_for
from tests.worker_support import CeleryProcess
from tests.worker_world import fresh_world

pytestmark = pytest.mark.slow

# These tests are about delivery, not unlearning quality: short jobs, an open gate.
FAST = {
    "unlearn_min_steps": 4,
    "unlearn_max_epochs": 2,
    "gate_mia_band": 1.0,
    "gate_max_auc_drop": 1.0,
}


def _ask(settings, *users: int) -> None:
    with session_scope(settings.db_url) as s:
        for u in users:
            request_forget(s, str(u), salt=settings.salt(), actor="test")


def _cut(settings) -> int:
    with session_scope(settings.db_url) as s:
        return cut_batch(s, BatchPolicy(1, 0, 100), force=True, actor="test").id


def _job(settings, job_id: int) -> UnlearningJob:
    with session_scope(settings.db_url, write=False) as s:
        job = s.get(UnlearningJob, job_id)
        s.expunge(job)
        return job


def _assert_exactly_once(settings, users: int, adapters: int = 1) -> None:
    with session_scope(settings.db_url, write=False) as s:
        statuses = s.scalars(select(ForgetRequest.status)).all()
        assert statuses == [RequestStatus.completed] * users
        completions = s.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.entity == "forget_request", AuditEntry.to_status == "completed")
        )
        assert completions == users  # each request completed once, never twice
        assert s.scalar(select(func.count()).select_from(AdapterVersion)) == adapters
    folders = settings.adapter_dir.iterdir() if settings.adapter_dir.exists() else []
    live = [p for p in folders if p.is_dir()]
    assert len(live) == 1, live  # the published adapter only: no second copy, no leftovers


def _completed(settings, job_id: int, worker: CeleryProcess):
    job = _job(settings, job_id)
    assert job.status != JobStatus.failed, (job.error, worker.output())
    return job.status == JobStatus.succeeded


def test_a_worker_killed_mid_job_is_replaced_and_the_job_runs_once(service_base, tmp_path):
    with fresh_world(service_base, tmp_path, **FAST) as settings:
        _ask(settings, 5, 17, 33)
        job_id = _cut(settings)
        first = CeleryProcess(settings, "worker", tmp_path).start()
        beat = CeleryProcess(settings, "beat", tmp_path).start()
        try:
            wait_for(
                lambda: _job(settings, job_id).stage in ("augment", "teachers", "unlearn"),
                180,
                "the job to be training",
            )
            first.kill()  # SIGKILL: no cleanup, the message unacknowledged, the lease ticking
            assert _job(settings, job_id).status == JobStatus.running
            with CeleryProcess(settings, "worker", tmp_path) as second:
                wait_for(lambda: _completed(settings, job_id, second), 300, "the take-over")
        finally:
            first.stop()
            beat.stop()
        job = _job(settings, job_id)
        assert job.attempts == 2 and job.status == JobStatus.succeeded
        _assert_exactly_once(settings, users=3)


def test_a_crash_between_commit_and_enqueue_loses_nothing(service_base, tmp_path):
    """The batch is committed but its message never sent (the process died in between):
    the beat tick finds the job and sends it."""
    with fresh_world(service_base, tmp_path, **FAST) as settings:
        _ask(settings, 5, 17)
        job_id = _cut(settings)  # committed; no message
        assert _job(settings, job_id).enqueued_at is None
        with (
            CeleryProcess(settings, "worker", tmp_path) as worker,
            CeleryProcess(settings, "beat", tmp_path),
        ):
            wait_for(lambda: _completed(settings, job_id, worker), 300, "the job to complete")
        assert _job(settings, job_id).attempts == 1
        _assert_exactly_once(settings, users=2)


def test_a_duplicate_task_message_runs_nothing_twice(service_base, tmp_path):
    with fresh_world(service_base, tmp_path, **FAST) as settings:
        _ask(settings, 5, 17)
        job_id = _cut(settings)
        with CeleryProcess(settings, "worker", tmp_path) as worker:  # no beat: only our messages
            assert send_run_job(settings, job_id) and send_run_job(settings, job_id)
            wait_for(lambda: _completed(settings, job_id, worker), 300, "the job to complete")
            assert send_run_job(settings, job_id)  # a late duplicate after success
            wait_for(
                lambda: worker.output().count("nothing to run") >= 2,
                60,
                "both duplicates to be turned away",
            )
        with session_scope(settings.db_url, write=False) as s:
            claims = s.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.entity == "job", AuditEntry.action == "claimed")
            )
        assert claims == 1
        _assert_exactly_once(settings, users=2)


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of our own to restart (the machine's shared one is left alone)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()

    class Server:
        url = f"redis://127.0.0.1:{port}/0"

        def start(self):
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            import redis

            wait_for(lambda: _ping(redis.Redis.from_url(self.url)), 20, "redis to start")

        def kill(self):
            self.proc.kill()
            self.proc.wait(10)

    server = Server()
    server.start()
    yield server
    server.kill()


def _ping(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def test_redis_restarted_mid_job_loses_nothing(service_base, tmp_path, private_redis):
    """Redis keeps nothing on disk here: a restart drops every queued message. The running job
    carries on (it needs only the database), and work that arrives while Redis is down is found
    by the next tick.

    Celery's worker may exit when it loses the broker: kombu's Redis transport can fail while
    restoring unacknowledged messages ("Unrecoverable error: 'NoneType' object has no attribute
    'hostname'"). Production runs workers under a supervisor (compose: restart unless-stopped),
    so this test plays the supervisor: a worker that exits is started again. Nothing may be lost
    or run twice either way."""
    with fresh_world(service_base, tmp_path, redis_url=private_redis.url, **FAST) as settings:
        _ask(settings, 5, 17)
        first = _cut(settings)
        workers = [CeleryProcess(settings, "worker", tmp_path).start()]
        try:
            with CeleryProcess(settings, "beat", tmp_path) as beat:
                wait_for(
                    lambda: _job(settings, first).stage in ("augment", "teachers", "unlearn"),
                    180,
                    "the first job to be training",
                )
                private_redis.kill()
                _ask(settings, 33, 41)  # accepted while the broker is away
                second = _cut(settings)
                assert not send_run_job(settings, second)  # the send fails; the database keeps it
                private_redis.start()

                def both_completed() -> bool:
                    if workers[-1].proc.poll() is not None:  # the supervisor's part
                        workers.append(CeleryProcess(settings, "worker", tmp_path).start())
                    latest = workers[-1]
                    return _completed(settings, first, latest) and _completed(
                        settings, second, latest
                    )

                wait_for(
                    both_completed,
                    420,
                    "both jobs to complete after the restart",
                    lambda: "\n".join(
                        [f"worker {i}:\n{w.output()}" for i, w in enumerate(workers)]
                        + [f"beat:\n{beat.output()}"]
                    ),
                )
        finally:
            for worker in workers:
                worker.stop()
        _assert_exactly_once(settings, users=4, adapters=2)


def test_queue_names_are_private_to_each_test(service_base, tmp_path):
    with fresh_world(service_base, tmp_path) as a, fresh_world(service_base, tmp_path / "b") as b:
        assert a.model_channel != b.model_channel
        assert a.queue_unlearning != b.queue_unlearning and a.queue_control != b.queue_control
    assert Path(a.data_dir) != Path(b.data_dir)
