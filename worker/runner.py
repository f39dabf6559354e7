"""Running one job: claim it under a lease, unlearn (or consolidate), gate, publish, purge."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict

from peft import LoraConfig
from sqlalchemy import select

from e2urec.adapter_files import read_adapter
from e2urec.atomic import folder_sha256
from e2urec.backbones import Backbone
from e2urec.lora import layers_of, with_adapter
from e2urec.model_store import load_model
from e2urec.training import TrainConfig
from e2urec.unlearn import (
    E2URecConfig,
    StopRule,
    as_trained,
    e2urec_unlearn,
    fitted_like,
    student_on,
)
from service.core.db.models import AdapterVersion, JobKind, RequestStatus, UnlearningJob, User
from service.core.db.session import session_scope
from service.core.settings import Settings
from service.domain.jobs import (
    LeaseLost,
    Published,
    claim_next_job,
    complete_without_training,
    fail_job,
    finish_consolidation,
    hold_lease,
    publish_and_complete,
)
from service.domain.model_changes import publish_model_change
from service.domain.registry import active_adapter, active_base
from service.domain.tasks_client import send_tick
from worker import heartbeat
from worker.data import build_job_data
from worker.gate import quality_gate
from worker.lease import Lease
from worker.probes import make_probes
from worker.purge import purge_superseded

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    def __init__(self, reason: str, metrics: dict):
        super().__init__(reason)
        self.metrics = metrics


def run_next(settings: Settings, worker_name: str, hint: int | None = None) -> str:
    """Claim the oldest runnable job (usually ``hint``) and run it; returns what happened."""
    owner = f"{worker_name}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
    with session_scope(settings.db_url) as session:
        job = claim_next_job(
            session, owner, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
        )
        claimed = (job.id, job.kind, job.attempts) if job is not None else None
    if claimed is None:
        return f"nothing to run for job {hint}: another job holds the lease, or none is queued"
    job_id, kind, attempt = claimed
    log.info("job %s (%s) claimed by %s, attempt %s", job_id, kind, owner, attempt)
    _beat(settings, worker_name, job_id)
    try:
        with Lease(settings, job_id, owner) as lease:
            try:
                if kind == JobKind.consolidate:
                    outcome = run_consolidation(settings, job_id, owner, attempt, lease)
                else:
                    outcome = run_unlearning(settings, job_id, owner, attempt, lease)
            except LeaseLost:
                raise
            except GateFailed as exc:
                _fail(settings, job_id, owner, f"quality gate: {exc}", exc.metrics)
                outcome = f"job {job_id} failed the quality gate: {exc}"
            except Exception as exc:
                log.exception("job %s failed", job_id)
                _fail(settings, job_id, owner, f"{type(exc).__name__}: {exc}", None)
                outcome = f"job {job_id} failed: {exc}"
    except LeaseLost as exc:
        outcome = f"job {job_id}: {exc}"
    finally:
        _beat(settings, worker_name, None)
    send_tick(settings, send_all=True)  # the next queued job, if any, starts now
    log.info(outcome)
    return outcome


def _beat(settings: Settings, worker_name: str, job_id: int | None) -> None:
    try:
        heartbeat.beat(settings, worker_name, running_job_id=job_id, job_known=True)
    except Exception as exc:
        log.warning("heartbeat failed: %s", exc)


def _fail(settings: Settings, job_id: int, owner: str, error: str, metrics: dict | None) -> None:
    with session_scope(settings.db_url) as session:
        job = hold_lease(session, job_id, owner)
        fail_job(session, job, error, actor=owner, metrics=metrics)


def _published_despite_error(settings: Settings, job_id: int, folder) -> Published | None:
    """If the publish transaction committed although its call raised, what it published."""
    try:
        with session_scope(settings.db_url, write=False) as session:
            adapter = session.scalars(
                select(AdapterVersion).where(AdapterVersion.path == str(folder.resolve()))
            ).first()
            if adapter is None:
                return None
            done = [
                r
                for r in session.get(UnlearningJob, job_id).requests
                if r.status == RequestStatus.completed
            ]
            log.warning("job %s: publish raised but had committed adapter %s", job_id, adapter.id)
            return Published(adapter.id, len(done), 0, len(done))
    except Exception as exc:  # still unknown: the folder stays; the job is retried or purged
        log.error("job %s: cannot tell whether the publish committed: %s", job_id, exc)
        return None


def _load_base(base) -> tuple[Backbone, dict]:
    actual = folder_sha256(base.path)
    if actual != base.checksum:
        raise RuntimeError(f"base model {base.id} at {base.path} does not match its checksum")
    return load_model(base.path)


def as_base_was_trained(
    settings: Settings, base_config: TrainConfig | None, continued: LoraConfig | None = None
) -> dict:
    """E2URec settings that follow how the base was trained: the student's layers, the
    augmented model and the retain CE (``fitted_like``), unless the operator named the
    student's layers, and activation checkpointing where the worker's setting says auto.

    ``continued``: the config of the serving adapter a warm start continues. Its layers are the
    student's whatever the settings say (a continued adapter cannot change shape), so its
    dropout and auto's checkpointing follow them: an all-linear adapter continued as "qv" would
    otherwise step with dropout on 210 layers and without checkpointing, past the container's
    memory."""
    like = fitted_like(base_config)
    if continued is not None:
        like |= student_on(layers_of(continued))
    elif settings.unlearn_student_modules != "auto":
        like |= student_on(settings.unlearn_student_modules)
    checkpointing = settings.unlearn_activation_checkpointing
    if checkpointing == "auto":  # a step's memory is what a pretrained LLM's job runs out of
        checkpointing = like.get("target_modules") == "all-linear"
    return like | {"activation_checkpointing": checkpointing}


def run_unlearning(settings: Settings, job_id: int, owner: str, attempt: int, lease: Lease) -> str:
    started = time.perf_counter()
    lease.progress("prepare", 0, 1, None)
    with session_scope(settings.db_url, write=False) as session:
        job = session.get(UnlearningJob, job_id)
        requests = [r for r in job.requests if r.status == RequestStatus.running]
        forget_users = {r.user_id for r in requests if r.user_id is not None}
        base = active_base(session)
        if base is None:
            raise RuntimeError("no base model is registered: run `e2urec-service bootstrap`")
        active = active_adapter(session)
        if active is not None and active.base_model_id != base.id:
            active = None
        waits = [(job.created_at - r.created_at).total_seconds() for r in requests]
        data = build_job_data(session, base, forget_users, settings, seed=job_id)
        session.expunge_all()

    def complete_untrained(metrics: dict) -> None:
        with session_scope(settings.db_url) as session:
            complete_without_training(
                session,
                job_id,
                owner,
                base_model_id=base.id,
                adapter_id=active.id if active else None,
                metrics=metrics,
                signer=settings.signer(),
            )

    if not requests:
        # its requests were completed elsewhere (by a consolidation): nothing left to do
        complete_untrained({"requests": 0})
        return f"job {job_id}: no open requests left"
    backbone, manifest = _load_base(base)
    init = read_adapter(active.path, active.checksum) if active is not None else None
    metrics: dict = {
        "requests": len(requests),
        "forget_users": len(forget_users),
        "forget_samples": len(data.forget),
        "retain_samples": len(data.retain),
        "audit_samples": len(data.audit),
        "valid_samples": len(data.valid),
        "warm_start_from": active.id if active else None,
        "attempt": attempt,
        "request_wait_seconds_max": max(waits, default=0.0),
    }
    if not data.forget:
        complete_untrained(metrics)
        return f"job {job_id}: its users had no training samples; data deleted, nothing trained"

    trained = manifest.get("train_config")  # how the base was made (absent: an older manifest)
    base_config = TrainConfig(**trained) if trained else None
    cfg = E2URecConfig.within(
        StopRule(
            max_epochs=settings.unlearn_max_epochs,
            max_valid_auc_drop=settings.gate_max_auc_drop,
            eval_samples=settings.valid_samples,  # all of them: the gate's samples
        ),
        min_steps_per_epoch=settings.unlearn_min_steps,
        # The checks score every held-out sample; at 4 per epoch they were over half of a
        # 100-user job on CPU (217 of 400 s).
        checks_per_epoch=settings.unlearn_checks_per_epoch,
        # The precision the base was trained in (bfloat16 for a pretrained LLM where the
        # hardware has it: 1.6x a step on such a CPU).
        bf16=base_config.bf16 if base_config else False,
        **as_base_was_trained(settings, base_config, init.config if init else None),
        seed=job_id,
    )
    folder = settings.adapter_dir / f"job-{job_id}-attempt-{attempt}"
    if folder.exists():  # a previous run of this very attempt died after writing: not published
        shutil.rmtree(folder)
    result = e2urec_unlearn(
        backbone,
        # a base trained with unrated negatives forgets and keeps negatives of the same kind
        as_trained(data.task(), base_config, data.retain + data.forget),
        cfg,
        out=folder,
        progress=False,
        on_progress=lease.progress,
        init_adapter=init,
    )
    try:
        lease.progress("evaluate", 0, 1, None)
        current = with_adapter(backbone, init) if init is not None else backbone
        gate = quality_gate(
            current, result.backbone, data.catalog, data.valid, data.forget, data.audit, settings
        )
        metrics |= {
            "gate": gate.metrics,
            "unlearn_seconds": result.seconds,
            "stage_seconds": result.details.get("stage_seconds", {}),
            # Whether the forgetting teacher asked for forgetting: operators read this when a
            # job passes its gate without the forget loss moving.
            "teacher_forget_loss": result.details.get("teacher_forget_loss", {}),
            "augment": result.details.get("augment", {}),
            "alpha": result.details.get("alpha"),
            "stopped": result.stopped,
            "trainable_parameters": result.trainable_parameters,
            "config": asdict(cfg),
        }
        if not gate.passed:
            raise GateFailed("; ".join(gate.reasons), metrics)
        probes = make_probes(result.backbone, data.catalog, seed=job_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never published: nobody may load it
        raise
    lease.progress("publish", 0, 1, None)
    metrics["job_seconds"] = time.perf_counter() - started
    try:
        with session_scope(settings.db_url) as session:
            published = publish_and_complete(
                session,
                job_id,
                owner,
                base_model_id=base.id,
                parent_id=active.id if active else None,
                path=str(folder.resolve()),
                checksum=result.details["checksum"],
                metrics=metrics,
                probes=probes,
                gate=gate.metrics,
                signer=settings.signer(),
            )
    except Exception:
        # The commit's outcome can be unknown (the connection broke during COMMIT): the folder
        # may be the active adapter now. Never delete it here: ask the database; a folder no
        # row names is the purge's, after its grace period.
        published = _published_despite_error(settings, job_id, folder)
        if published is None:
            raise
    publish_model_change(settings, str(published.adapter_id))
    purge_superseded(settings, actor=owner)
    return (
        f"job {job_id}: adapter {published.adapter_id} serving; {published.completed_requests} "
        f"requests completed, {published.deleted_interactions} interactions deleted"
    )


def run_consolidation(
    settings: Settings, job_id: int, owner: str, attempt: int, lease: Lease
) -> str:
    """Retrain the base on what the database holds now (forgotten users are gone, waiting ones
    left out), activate it, and complete the requests of everyone it was trained without."""
    from service.domain.bootstrap import train_base

    lease.progress("prepare", 0, 1, None)
    with session_scope(settings.db_url, write=False) as session:
        base = active_base(session)
        excluded = set(session.scalars(select(User.id).where(User.quarantined_at.is_not(None))))
        recipe = dict(base.metrics or {}) if base is not None else {}
    train = recipe.get("train_config", {})
    out = settings.data_dir / "models" / f"base-job-{job_id}-attempt-{attempt}"
    if out.exists():
        shutil.rmtree(out)
    new_recipe = train_base(
        settings,
        out,
        backbone=recipe.get("backbone", "tiny"),
        epochs=train.get("epochs"),
        lr=train.get("lr"),
        samples=(recipe.get("sample_config") or {}).get("max_samples") or 0,
        seed=train.get("seed", 0),
        log=log.info,
        progress=False,
        on_step=lambda step, total, loss: lease.progress("train", step, total, loss),
        exclude_users=excluded,
    )
    lease.progress("publish", 0, 1, None)
    try:
        with session_scope(settings.db_url) as session:
            base_id, published = finish_consolidation(
                session,
                job_id,
                owner,
                path=out,
                recipe=new_recipe,
                excluded_users=excluded,
                signer=settings.signer(),
            )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    publish_model_change(settings, f"base-{base_id}")
    purge_superseded(settings, actor=owner)
    return (
        f"job {job_id}: base {base_id} retrained and serving; "
        f"{published.completed_requests} requests completed by consolidation"
    )
