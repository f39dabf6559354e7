"""Restarts under traffic: the API, PostgreSQL and a worker. Nothing acknowledged is lost, and
every request ends completed exactly once."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service.core.db.models import (
    AuditEntry,
    ForgetRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
)
from service.core.db.session import dispose_all, session_scope
from service.domain.registry import register_base
from tests.service_support import (
    ADMIN_KEY,
    FORGET_KEY,
    KEYS,
    RECOMMEND_KEY,
    REQUIRED,
    auth,
    free_port,
    make_settings,
    postgres_database,
    prepare_database,
    redis_or_skip,
    wait_for,
)
from tests.worker_support import ROOT, CeleryProcess, worker_env

pytestmark = pytest.mark.slow
FAST = {
    "unlearn_min_steps": 4,
    "unlearn_max_epochs": 2,
    "gate_mia_band": 1.0,
    "gate_max_auc_drop": 1.0,
    "tick_seconds": 1.0,
    "lease_seconds": 6.0,
    "resend_after_seconds": 3.0,
    "retain_ratio": 2.0,
    "valid_samples": 300,
    "batch_size": 1000,
    "batch_max_wait_seconds": 3600.0,
}


class Api:
    """``e2urec-service serve`` as a process that can be stopped and started on one port."""

    def __init__(self, settings, log_dir: Path):
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"api-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Api:
        env = worker_env(self.settings, {"E2UREC_API_KEYS": _keys()})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, 120, "the API to be ready")
        return self

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # graceful: in-flight requests finish
            self.proc.wait(30)


def _keys() -> str:
    return ",".join(f"{k}:{'+'.join(v)}" for k, v in KEYS.items())


class Traffic:
    """Clients that keep asking to forget users (one request each, retried until answered,
    as a real client would) and for recommendations, recording every answer."""

    def __init__(self, url: str, users: list[int]):
        self.url = url
        self.pending = list(users)
        self.acknowledged: dict[int, str] = {}  # user -> request id we were given
        self.answers: list[int] = []
        self.refused = 0  # connection refused / reset while a server was down
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._forget) for _ in range(3)]
        self.threads.append(threading.Thread(target=self._recommend))

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _forget(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                with self.lock:
                    if not self.pending:
                        return
                    user = self.pending.pop(0)
                while not self.stop.is_set():
                    try:
                        r = c.post(f"/forget/{user}", headers=auth(FORGET_KEY))
                    except httpx.TransportError:
                        self.refused += 1
                        time.sleep(0.1)
                        continue
                    self.answers.append(r.status_code)
                    if r.status_code in (200, 202):
                        self.acknowledged[user] = r.json()["request_id"]
                        break
                    time.sleep(0.1)  # 503 while the database restarts: retry

    def _recommend(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    r = c.get(
                        "/recommend", params={"user_id": "1", "k": 3}, headers=auth(RECOMMEND_KEY)
                    )
                    self.answers.append(r.status_code)
                except httpx.TransportError:
                    self.refused += 1
                time.sleep(0.02)


def _requests(url: str) -> dict[int, tuple[str, str]]:
    with session_scope(url, write=False) as s:
        rows = s.execute(
            select(ForgetRequest.user_id, ForgetRequest.request_id, ForgetRequest.status)
        ).all()
    return {u: (rid, status) for u, rid, status in rows}


def test_api_restarted_mid_traffic_loses_no_acknowledged_request(tmp_path, service_base):
    with postgres_database() as url:
        prepare_database(url, service_base.dataset, None)
        with session_scope(url) as s:
            register_base(s, service_base.base, actor="test", metrics=service_base.recipe)
        settings = make_settings(url, tmp_path)
        first = Api(settings, tmp_path).start()
        users = list(range(2, 58))
        with Traffic(first.url, users) as traffic:
            wait_for(lambda: len(traffic.acknowledged) >= 10, 60, "some requests acknowledged")
            first.stop()  # SIGTERM: uvicorn finishes what it has, refuses new connections
            second = Api(settings, tmp_path)
            second.port, second.url = first.port, first.url  # same address, as a restart
            second.start()
            wait_for(lambda: len(traffic.acknowledged) == len(users), 120, "every user answered")
        second.stop()
        stored = _requests(url)
    assert {u: stored[u][0] for u in users} == traffic.acknowledged  # nothing acknowledged lost
    assert all(code < 500 for code in traffic.answers)
    assert traffic.refused > 0  # the restart really happened under traffic


def _private_postgres(request: pytest.FixtureRequest):
    """A PostgreSQL cluster of our own (the machine's shared one is left alone)."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    runuser = shutil.which("runuser")
    if not binaries or not runuser or os.geteuid() != 0:
        message = "a private PostgreSQL needs its binaries and root (to run them as postgres)"
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    bin_dir = Path(binaries[-1])
    # pytest's tmp_path sits under a root-only (0700) folder the postgres user cannot enter,
    # so the cluster lives in a folder of its own under /tmp, removed at the end of the test
    home = Path(tempfile.mkdtemp(prefix="e2urec-pg-"))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    os.chmod(home, 0o755)
    data = home / "pgdata"
    data.mkdir()
    shutil.chown(data, "postgres")
    port = free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(
            [runuser, "-u", "postgres", "--", *args], check=True, capture_output=True, cwd="/tmp"
        )

    as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    log = home / "pg.log"
    log.touch()
    shutil.chown(log, "postgres")

    def ctl(action: str) -> None:
        as_postgres(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k /tmp -c listen_addresses=127.0.0.1",
            action,
        )

    ctl("start")
    return port, ctl


def test_postgres_restarted_mid_job_loses_nothing(tmp_path, service_base, request):
    """The API answers 503 while the database is down and recovers after; a job running
    through the outage still completes once (its lease has slack; renewals resume)."""
    redis_url = redis_or_skip()
    port, ctl = _private_postgres(request)
    admin = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        with postgres_database(admin) as url:
            prepare_database(url, service_base.dataset, None)
            with session_scope(url) as s:
                register_base(s, service_base.base, actor="test", metrics=service_base.recipe)
            settings = make_settings(
                url, tmp_path / "data", redis_url=redis_url, **FAST | {"lease_seconds": 30.0}
            )
            api = Api(settings, tmp_path).start()
            with httpx.Client(base_url=api.url, timeout=10) as c:
                for user in (5, 17):
                    assert c.post(f"/forget/{user}", headers=auth(FORGET_KEY)).status_code == 202
                job = c.post("/admin/batches", headers=auth(ADMIN_KEY)).json()["id"]
            with (
                CeleryProcess(settings, "worker", tmp_path) as worker,
                CeleryProcess(settings, "beat", tmp_path),
            ):
                wait_for(
                    lambda: _stage(url, job) in ("augment", "teachers", "unlearn"),
                    180,
                    "the job to be training",
                )
                ctl("stop")
                down = httpx.post(f"{api.url}/forget/33", headers=auth(FORGET_KEY), timeout=30)
                ctl("start")
                wait_for(
                    lambda: _status(url, job) != JobStatus.running,
                    300,
                    "the job to finish after the restart",
                )
                assert _status(url, job) == JobStatus.succeeded, worker.output()
                after = httpx.post(f"{api.url}/forget/33", headers=auth(FORGET_KEY), timeout=30)
            api.stop()
            with session_scope(url, write=False) as s:
                statuses = sorted(s.scalars(select(ForgetRequest.status)))
                completions = s.scalar(
                    select(func.count())
                    .select_from(AuditEntry)
                    .where(
                        AuditEntry.entity == "forget_request",
                        AuditEntry.to_status == "completed",
                    )
                )
            dispose_all()
    finally:
        dispose_all()
        with contextlib.suppress(subprocess.CalledProcessError):
            ctl("stop")
    assert down.status_code == 503 and "retry" in down.json()["detail"]
    assert after.status_code == 202  # accepted once the database is back
    assert statuses == ["completed", "completed", "pending"] and completions == 2


def _stage(url: str, job_id: int) -> str:
    with session_scope(url, write=False) as s:
        return s.get(UnlearningJob, job_id).stage


def _status(url: str, job_id: int) -> str:
    try:
        with session_scope(url, write=False) as s:
            return s.get(UnlearningJob, job_id).status
    except Exception:
        return JobStatus.running  # the database is still coming back


def test_a_worker_restarted_gracefully_finishes_its_job_and_the_next_runs(tmp_path, service_base):
    """SIGTERM is a warm shutdown: the running job finishes (it is acknowledged late), the
    worker exits, and its replacement takes the next batch."""
    from tests.worker_world import fresh_world

    with fresh_world(service_base, tmp_path, **FAST) as settings:
        from service.domain.forget import request_forget
        from service.domain.jobs import BatchPolicy, cut_batch

        def batch(*users: int) -> int:
            with session_scope(settings.db_url) as s:
                for u in users:
                    request_forget(s, str(u), salt=settings.salt(), actor="test")
            with session_scope(settings.db_url) as s:
                return cut_batch(s, BatchPolicy(1, 0, 100), force=True).id

        first_job = batch(5, 17)
        beat = CeleryProcess(settings, "beat", tmp_path).start()
        try:
            first = CeleryProcess(settings, "worker", tmp_path).start()
            wait_for(
                lambda: _stage(settings.db_url, first_job) in ("augment", "unlearn"),
                180,
                "the first job to be training",
            )
            second_job = batch(33)
            first.stop_warm(timeout=300)  # SIGTERM to the main process: finish, then exit
            assert _status(settings.db_url, first_job) == JobStatus.succeeded, first.output()
            with CeleryProcess(settings, "worker", tmp_path) as replacement:
                wait_for(
                    lambda: _status(settings.db_url, second_job) == JobStatus.succeeded,
                    300,
                    "the next job on the new worker",
                )
                # the whole log: on a slow machine beat's ticks push the claim out of output()'s
                # last 6,000 characters before the job finishes
                assert "claimed" in replacement.log_path.read_text(errors="replace"), (
                    replacement.output()
                )
        finally:
            beat.stop()
        with session_scope(settings.db_url, write=False) as s:
            statuses = s.scalars(select(ForgetRequest.status)).all()
            attempts = s.scalars(select(UnlearningJob.attempts).order_by(UnlearningJob.id)).all()
        assert statuses == [RequestStatus.completed] * 3 and attempts == [1, 1]
