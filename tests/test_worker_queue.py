"""The queue in PostgreSQL: batching policy, claiming under a lease, take-over, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from service.core.db.models import (
    ForgetRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
    utcnow,
)
from service.core.db.session import session_scope
from service.domain.forget import request_forget
from service.domain.jobs import (
    BatchPolicy,
    LeaseLost,
    claim_next_job,
    cut_batch,
    fail_job,
    hold_lease,
    jobs_needing_a_message,
    mark_enqueued,
    renew_lease,
    retry_job,
)
from tests.service_support import postgres_database, prepare_database, small_dataset

SALT = b"salt"


@pytest.fixture
def db():
    with postgres_database() as url:
        prepare_database(url, small_dataset(users=30, items=30, per_user=8), None)
        yield url


def _ask(url: str, *users: int) -> None:
    with session_scope(url) as s:
        for u in users:
            request_forget(s, str(u), salt=SALT, actor="test")


def _statuses(url: str) -> list[str]:
    with session_scope(url, write=False) as s:
        return list(s.scalars(select(ForgetRequest.status).order_by(ForgetRequest.id)))


def test_a_batch_is_cut_at_the_size_or_the_wait(db):
    policy = BatchPolicy(size=3, max_wait_seconds=60, max_requests=100)
    _ask(db, 1, 2)
    with session_scope(db) as s:
        assert cut_batch(s, policy) is None  # two young requests: wait for more
    with session_scope(db) as s:
        later = utcnow() + timedelta(seconds=61)
        job = cut_batch(s, policy, now=later)
        assert job is not None and job.request_count == 2 and "waited" in job.reason
    _ask(db, 3, 4, 5)
    with session_scope(db) as s:
        job = cut_batch(s, policy)
        assert job.request_count == 3 and "3 requests pending" in job.reason
    _ask(db, 6)
    with session_scope(db) as s:
        assert cut_batch(s, policy, force=True, actor="admin").reason == "forced by admin"
    with session_scope(db) as s:
        assert cut_batch(s, policy, force=True) is None  # nothing pending
    assert _statuses(db) == ["scheduled"] * 6


def test_one_job_runs_at_a_time_oldest_first_and_a_dead_workers_job_is_taken_over(db):
    policy = BatchPolicy(size=1, max_wait_seconds=0, max_requests=1)
    _ask(db, 1, 2)
    with session_scope(db) as s:
        first, second = cut_batch(s, policy).id, cut_batch(s, policy).id
    with session_scope(db) as s:
        job = claim_next_job(s, "w1", lease_seconds=30, max_attempts=2)
        assert job.id == first and job.attempts == 1
    with session_scope(db) as s:  # a second worker: the first holds a live lease
        assert claim_next_job(s, "w2", lease_seconds=30, max_attempts=2) is None
    with session_scope(db) as s:
        assert renew_lease(s, first, "w1", 30, stage="unlearn", step=3, total=10, loss=0.5)
        assert not renew_lease(s, first, "w2", 30)
    with session_scope(db) as s:  # w1 dies: its lease runs out
        s.get(UnlearningJob, first).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(db) as s:
        job = claim_next_job(s, "w2", lease_seconds=30, max_attempts=2)
        assert job.id == first and job.attempts == 2 and job.lease_owner == "w2"
    with session_scope(db) as s, pytest.raises(LeaseLost):
        hold_lease(s, first, "w1")  # w1 came back: it may not publish anything
    with session_scope(db) as s:  # w2 dies too: two attempts are the limit
        s.get(UnlearningJob, first).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(db) as s:
        job = claim_next_job(s, "w3", lease_seconds=30, max_attempts=2)
        assert job.id == second  # the first was given up, the next one runs
    with session_scope(db, write=False) as s:
        gave_up = s.get(UnlearningJob, first)
        assert gave_up.status == JobStatus.failed and "gave up after 2" in gave_up.error
        assert [r.status for r in gave_up.requests] == [RequestStatus.failed]


def test_a_failed_job_is_retried_as_a_new_job(db):
    _ask(db, 7, 8)
    with session_scope(db) as s:
        job_id = cut_batch(s, BatchPolicy(1, 0, 10)).id
    with session_scope(db) as s:
        job = claim_next_job(s, "w", lease_seconds=30, max_attempts=3)
        fail_job(s, job, "quality gate: too far", actor="w", metrics={"mia": 0.9})
    assert _statuses(db) == ["failed", "failed"]
    with session_scope(db) as s:
        assert cut_batch(s, BatchPolicy(1, 0, 10), force=True) is None  # failed is not pending
    with session_scope(db) as s:
        again = retry_job(s, job_id, actor="admin")
        assert again.retry_of_id == job_id and again.request_count == 2
        assert retry_job(s, job_id, actor="admin").id == again.id  # idempotent
    assert _statuses(db) == ["scheduled", "scheduled"]
    with session_scope(db) as s:
        with pytest.raises(LookupError):
            retry_job(s, 9999, actor="admin")
        with pytest.raises(ValueError, match="only a failed job"):
            retry_job(s, again.id, actor="admin")


def test_which_jobs_need_a_message(db):
    _ask(db, 9, 10)
    with session_scope(db) as s:
        a = cut_batch(s, BatchPolicy(1, 0, 1)).id
        b = cut_batch(s, BatchPolicy(1, 0, 1)).id
    with session_scope(db) as s:
        assert jobs_needing_a_message(s) == [a, b]  # never sent (a crash after the commit)
        mark_enqueued(s, [a, b])
    with session_scope(db) as s:
        assert jobs_needing_a_message(s, resend_after=30) == []  # sent just now
        assert jobs_needing_a_message(s, now=utcnow() + timedelta(seconds=31)) == [a, b]
    with session_scope(db) as s:
        claim_next_job(s, "w", lease_seconds=120, max_attempts=3)
    with session_scope(db) as s:  # a live job kicks the next one itself
        assert jobs_needing_a_message(s, now=utcnow() + timedelta(seconds=31)) == []
        s.get(UnlearningJob, a).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(db) as s:  # its worker died: both need a message again
        assert jobs_needing_a_message(s, now=utcnow() + timedelta(seconds=31)) == [a, b]


def test_a_batch_waits_for_the_forget_samples_the_gate_needs_then_falls_back_to_consolidation(
    db,
):
    from collections import Counter

    from service.core.db.models import BaseModelVersion, JobKind

    ratings = Counter(x.user_id for x in small_dataset(users=30, items=30, per_user=8).interactions)
    samples = {u: n - 1 for u, n in ratings.items()}  # a user's first rating has no history
    with session_scope(db) as s:  # the base trained on every rating
        s.add(BaseModelVersion(path="/nowhere", checksum="0" * 64, is_active=True, metrics={}))
    need = samples[1] + samples[2] + 1
    assert samples[3] > 1 and samples[4] < need
    policy = BatchPolicy(
        size=2,
        max_wait_seconds=60,
        max_requests=100,
        min_forget_samples=need,
        gather_max_seconds=600,
    )
    _ask(db, 1, 2)  # one sample short: the gate could not tell a no-op from a deletion
    with session_scope(db) as s:
        assert cut_batch(s, policy) is None
        assert cut_batch(s, policy, now=utcnow() + timedelta(seconds=61)) is None
    _ask(db, 3)  # enough
    with session_scope(db) as s:
        job = cut_batch(s, policy)
        assert job is not None and job.request_count == 3
        have = samples[1] + samples[2] + samples[3]
        assert f"{have} forget samples (gate needs {need})" in job.reason
    _ask(db, 4)
    with session_scope(db) as s:
        assert cut_batch(s, policy, now=utcnow() + timedelta(seconds=300)) is None
    with session_scope(db) as s:  # never enough in time: retraining without them always works
        assert cut_batch(s, policy, now=utcnow() + timedelta(seconds=601)) is None
        jobs = s.scalars(select(UnlearningJob).order_by(UnlearningJob.id)).all()
        assert [j.kind for j in jobs] == [JobKind.unlearn, JobKind.consolidate]
        assert "too small for the gate" in jobs[1].reason
    with session_scope(db) as s:  # an operator's explicit cut is still obeyed
        assert cut_batch(s, policy, force=True, actor="admin").request_count == 1
    assert _statuses(db) == ["scheduled"] * 4


def test_the_deployment_policy_waits_for_the_gates_power():
    from service.core.settings import Settings

    settings = Settings(database_url="sqlite://", api_keys={}, user_hash_salt="test-salt-012345")
    needed = settings.gate_min_forget_samples()
    assert needed is not None and 20 < needed < 200
    assert BatchPolicy.from_settings(settings).min_forget_samples == needed
    off = settings.model_copy(update={"batch_wait_for_gate_power": False})
    assert BatchPolicy.from_settings(off).min_forget_samples == 0


def test_the_purge_spares_a_leased_jobs_folder_and_publish_rechecks_it(db, tmp_path):
    """A job writes its adapter folder before the gate runs. However long the gate takes, the
    orphan purge must not delete it while the job holds its lease; and publishing re-checks
    the folder inside the transaction, so a changed or deleted folder is never activated."""
    import os
    import time

    from e2urec.atomic import folder_sha256
    from service.domain.jobs import publish_and_complete
    from service.domain.registry import active_adapter
    from tests.service_support import make_settings
    from worker.purge import purge_orphans

    settings = make_settings(db, tmp_path / "data", orphan_grace_seconds=1)
    _ask(db, 11, 12)
    with session_scope(db) as s:
        job_id = cut_batch(s, BatchPolicy(1, 0, 10), force=True).id
    with session_scope(db) as s:
        claim_next_job(s, "w", lease_seconds=600, max_attempts=3)
    live = settings.adapter_dir / f"job-{job_id}-attempt-1"
    crashed = settings.adapter_dir / "job-99999-attempt-1"  # no lease: a crashed attempt's
    for folder in (live, crashed):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(os.urandom(64))
        old = time.time() - 3600  # far past the grace period
        os.utime(folder, (old, old))
    checksum = folder_sha256(live)

    assert purge_orphans(settings) == [str(crashed)]
    assert live.is_dir() and not crashed.exists()

    (live / "adapter_model.safetensors").write_bytes(b"changed after the gate")
    with session_scope(db) as s, pytest.raises(RuntimeError, match="changed since the gate"):
        publish_and_complete(
            s, job_id, "w", base_model_id=1, parent_id=None, path=str(live),
            checksum=checksum, metrics={}, probes=[], gate={}, signer=settings.signer(),
        )  # fmt: skip
    with session_scope(db, write=False) as s:
        assert active_adapter(s) is None
        assert s.get(UnlearningJob, job_id).status == JobStatus.running


def test_leases_use_the_databases_clock_not_the_workers(db, monkeypatch):
    """A worker whose clock runs two hours ahead must not write a lease that outlives its
    death by two hours (nor, running behind, one that is already expired)."""
    import service.domain.jobs.lease as jobs

    ahead = utcnow() + timedelta(hours=2)
    monkeypatch.setattr(jobs, "utcnow", lambda: ahead)
    _ask(db, 13)
    with session_scope(db) as s:
        job_id = cut_batch(s, BatchPolicy(1, 0, 10), force=True, now=utcnow()).id
    with session_scope(db) as s:
        claim_next_job(s, "w", lease_seconds=30, max_attempts=3)
    with session_scope(db, write=False) as s:
        expires = s.get(UnlearningJob, job_id).lease_expires_at
    assert abs((expires - timedelta(seconds=30) - datetime.now(UTC)).total_seconds()) < 60
    with session_scope(db) as s:
        assert renew_lease(s, job_id, "w", 30)
    with session_scope(db, write=False) as s:
        expires = s.get(UnlearningJob, job_id).lease_expires_at
    assert abs((expires - timedelta(seconds=30) - datetime.now(UTC)).total_seconds()) < 60


def test_a_repeat_request_racing_the_completion_returns_the_completed_one(db, monkeypatch):
    """The repeat reads the user, then the job completes (the user row is deleted) before the
    repeat looks for an open request: it must answer with the completed request, not fail."""
    import service.domain.forget as forget
    from service.core.db.models import Interaction, User

    _ask(db, 14)
    real = forget.open_request
    raced = {"done": False}

    def completion_commits_first(session, user_id):
        if not raced["done"]:
            raced["done"] = True
            with session_scope(db) as other:  # what publish_and_complete does, in short
                request = other.scalars(
                    select(ForgetRequest).where(ForgetRequest.user_id == user_id)
                ).one()
                request.status = RequestStatus.completed
                request.completed_at = utcnow()
                request.user_id = None
                other.execute(Interaction.__table__.delete().where(Interaction.user_id == user_id))
                other.delete(other.get(User, user_id))
        return real(session, user_id)

    monkeypatch.setattr(forget, "open_request", completion_commits_first)
    with session_scope(db) as s:
        again, created = request_forget(s, "14", salt=SALT, actor="test")
        assert not created and again.status == RequestStatus.completed


def test_queue_metrics_are_aggregated_by_the_database(db):
    """A scrape reads a few aggregate rows, however long the history: the same statements and
    rows for 2 jobs as for 12, and the histograms count what they should."""
    from sqlalchemy import event

    from service.core.db.session import engine_for
    from service.domain.queue_stats import JOB_BUCKETS, job_stats, open_requests

    def scrape() -> tuple[dict, int]:
        rows = []

        def count(conn, cursor, statement, parameters, context, executemany):
            rows.append(cursor.rowcount)

        engine = engine_for(db, write=False)
        event.listen(engine, "after_cursor_execute", count)
        try:
            with session_scope(db, write=False) as s:
                stats = job_stats(s)
                open_requests(s)
        finally:
            event.remove(engine, "after_cursor_execute", count)
        return stats, sum(max(r, 1) for r in rows)

    def run_jobs(users: range) -> None:
        for u in users:
            _ask(db, u)
            with session_scope(db) as s:
                job = cut_batch(s, BatchPolicy(1, 0, 10), force=True)
                job.status = JobStatus.succeeded
                job.started_at = utcnow() - timedelta(seconds=45)
                job.finished_at = utcnow()

    run_jobs(range(1, 3))
    small, small_rows = scrape()
    run_jobs(range(3, 13))
    large, large_rows = scrape()
    assert large_rows == small_rows < 20
    assert large["durations"].count == 12
    assert large["durations"].cumulative[JOB_BUCKETS.index(30)] == 0
    assert large["durations"].cumulative[JOB_BUCKETS.index(60)] == 12
    assert 12 * 44 < large["durations"].total < 12 * 50
    assert large["sizes"].count == 12 and large["oldest_open"] > 0
    assert ("unlearn", "succeeded", 12) in large["jobs"]


def test_a_failed_job_is_retried_with_backoff_then_given_up_with_an_alert(db):
    from service.core.db.models import AuditEntry
    from service.domain.jobs import auto_retry_failed

    _ask(db, 15, 16)
    with session_scope(db) as s:
        cut_batch(s, BatchPolicy(1, 0, 10), force=True)
    t0 = utcnow()

    def fail_current() -> int:
        with session_scope(db) as s:
            job = claim_next_job(s, "w", lease_seconds=30, max_attempts=3)
            fail_job(s, job, "boom", actor="w")
            job.finished_at = t0
            return job.id

    def tick(after_seconds: float):
        with session_scope(db) as s:
            return auto_retry_failed(
                s, max_retries=2, backoff_seconds=60, now=t0 + timedelta(seconds=after_seconds)
            )

    first = fail_current()
    assert tick(30) == ([], [])  # inside the first backoff (60 s)
    (second,), _ = tick(61)
    assert tick(62) == ([], [])  # one retry per failure
    assert _statuses(db) == ["scheduled", "scheduled"]
    assert fail_current() == second
    assert tick(100) == ([], [])  # the second backoff is 120 s
    (third,), _ = tick(121)
    assert fail_current() == third
    assert tick(10_000) == ([], [third])  # two retries were the limit: given up, once
    assert tick(20_000) == ([], [])
    assert _statuses(db) == ["failed", "failed"]  # still open, still quarantined
    with session_scope(db, write=False) as s:
        alert = s.scalars(select(AuditEntry).where(AuditEntry.action == "retries_exhausted")).one()
        assert alert.entity_id == str(third)
        chain = s.get(UnlearningJob, third)
        assert chain.retry_of_id == second and s.get(UnlearningJob, second).retry_of_id == first


def test_a_request_near_its_deadline_gets_a_consolidation(db):
    from service.core.db.models import JobKind
    from service.domain.jobs import deadline_fallback

    _ask(db, 17)
    day = 24 * 3600.0
    with session_scope(db) as s:
        kw = {"deadline_seconds": 30 * day, "margin_seconds": 3 * day}
        assert deadline_fallback(s, **kw, now=utcnow() + timedelta(days=26)) is None
        job = deadline_fallback(s, **kw, now=utcnow() + timedelta(days=27, seconds=1))
        assert job is not None and job.kind == JobKind.consolidate and job.reason == "deadline"
        again = deadline_fallback(s, **kw, now=utcnow() + timedelta(days=28))
        assert again.id == job.id  # one consolidation at a time


@pytest.mark.parametrize(
    ("modules", "checkpointing", "lora", "want"),
    [
        ("auto", "auto", True, ("all-linear", 0.0, True)),  # a pretrained LLM's base
        ("auto", "auto", False, ("qv", 0.05, False)),  # tiny, trained from scratch
        ("qv", "auto", True, ("qv", 0.05, False)),  # the operator's layers win
        ("all-linear", False, False, ("all-linear", 0.0, False)),  # and their memory switch
    ],
)
def test_the_worker_student_follows_the_base_unless_the_operator_says(
    modules, checkpointing, lora, want
):
    """An all-linear student forgot SmolLM2's forget users where the paper's q/v one did not,
    and its step needs 19.2 GB without recomputed activations: more than the worker's 16 GB
    container. So auto gives a pretrained LLM's base both, and tiny the paper's student."""
    from e2urec.training import TrainConfig
    from e2urec.unlearn import E2URecConfig, StopRule
    from service.core.settings import Settings
    from worker.runner import as_base_was_trained

    settings = Settings(
        unlearn_student_modules=modules, unlearn_activation_checkpointing=checkpointing
    )
    base = TrainConfig(lora=True, lora_targets="all-linear", lora_dropout=0.0) if lora else None
    cfg = E2URecConfig.within(StopRule(max_epochs=3), **as_base_was_trained(settings, base))
    assert (cfg.target_modules or "qv", cfg.lora_dropout, cfg.activation_checkpointing) == want


@pytest.mark.parametrize(
    ("adapter_layers", "want"),
    [
        (
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ("all-linear", 0.0, True),
        ),
        (["q_proj", "v_proj"], ("qv", 0.05, False)),
        ("all-linear", ("all-linear", 0.0, True)),
    ],
)
def test_a_warm_start_steps_like_the_adapter_it_continues(adapter_layers, want):
    """Every job after the first continues the serving adapter, whose layers cannot change. An
    all-linear adapter continued under an operator's "qv" kept q/v's dropout on 210 layers
    (about 2x a step) and left auto's checkpointing off (19.2 GB a SmolLM2 step, over the
    container's 16 GB)."""
    from peft import LoraConfig

    from e2urec.training import TrainConfig
    from e2urec.unlearn import E2URecConfig, StopRule
    from service.core.settings import Settings
    from worker.runner import as_base_was_trained

    operator_says = "all-linear" if want[0] == "qv" else "qv"  # the opposite of the adapter's
    settings = Settings(
        unlearn_student_modules=operator_says, unlearn_activation_checkpointing="auto"
    )
    base = TrainConfig(lora=True, lora_targets="all-linear", lora_dropout=0.0)
    continued = LoraConfig(r=16, target_modules=adapter_layers)
    cfg = E2URecConfig.within(
        StopRule(max_epochs=3), **as_base_was_trained(settings, base, continued)
    )
    assert (cfg.target_modules, cfg.lora_dropout, cfg.activation_checkpointing) == want
