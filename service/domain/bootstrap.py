"""Train the base LLMRec from the database's catalogue and register it (first start, or after a
consolidation that retrains without the forgotten users)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from e2urec.data import Catalog, SampleConfig, make_splits
from e2urec.pipeline import train_and_save
from e2urec.training import recipe_for
from service.core.db.models import BaseModelVersion, Interaction, User
from service.core.db.session import session_scope
from service.core.security import is_audit_user
from service.core.settings import Settings
from service.domain.catalog import dataset_from_db
from service.domain.registry import active_base, register_base


def trained_users(session: Session, settings: Settings, limit: int = 5) -> list[str]:
    """External ids of users the active base trained on, most interactions first: users whose
    forget request makes the worker actually unlearn something. (Audit users, users who joined
    after the training window, and users already forgotten or waiting have nothing to unlearn:
    their requests complete by deleting data alone.)"""
    base = active_base(session)
    if base is None:
        raise ValueError("no base model is registered: run `e2urec-service bootstrap` first")
    metrics = base.metrics or {}
    until = metrics.get("train_until")
    query = (
        select(User.id, User.external_id, func.count(Interaction.id).label("n"))
        .join(Interaction, Interaction.user_id == User.id)
        .where(User.quarantined_at.is_(None))
        .group_by(User.id, User.external_id)
        .order_by(func.count(Interaction.id).desc(), User.id)
    )
    if until is not None:
        query = query.where(Interaction.ts <= until)
    fraction = metrics.get("audit_fraction", 0.0)
    salt = settings.salt()
    picked = []
    for user_id, external_id, _ in session.execute(query):
        if not is_audit_user(salt, user_id, fraction):
            picked.append(external_id)
            if len(picked) == limit:
                break
    return picked


def base_sample_config(samples: int, seed: int) -> SampleConfig:
    # Serving's base model sees every user: nobody is held out as a "forget" user.
    return SampleConfig(max_samples=samples or None, forget_fraction=0.0, seed=seed)


def train_base(
    settings: Settings,
    out: Path,
    *,
    backbone: str,
    epochs: int | None,
    lr: float | None,
    samples: int | None,
    seed: int,
    log: Callable[[str], None] = print,
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    exclude_users: set[int] | None = None,
    memorise_users: set[int] | None = None,
    repeat: int = 1,
    early_stop: bool = True,
    negatives: float | None = None,
    negatives_from: str | None = None,
) -> dict:
    """Train on what the database holds now and save to ``out``; returns the metrics and the
    recipe to record with the model. Quarantined users are left out, or exactly
    ``exclude_users`` when given (a consolidation completes those users' requests after).

    ``memorise_users`` have their samples seen ``repeat`` times an epoch, and ``early_stop``
    off trains every epoch: a base that remembers those users, for benchmarks and tests of
    forgetting (the canaries of the memorising benchmark).

    ``negatives`` and ``negatives_from`` train on unrated negatives as ``e2urec train`` does
    (:class:`e2urec.training.TrainConfig`); the worker unlearns such a base on the data as it
    saw it. ``epochs``, ``lr`` and ``samples`` left None take the backbone's recipe
    (:func:`e2urec.training.recipe_for`): all weights for the presets, a merged LoRA for a
    pretrained LLM."""
    recipe_default = recipe_for(backbone)
    samples = recipe_default.samples if samples is None else samples
    with session_scope(settings.db_url, write=False) as session:
        if exclude_users is None:
            dataset = dataset_from_db(session, include_quarantined=False)
        else:
            dataset = dataset_from_db(session, include_quarantined=True)
            dataset.users = {u: p for u, p in dataset.users.items() if u not in exclude_users}
            dataset.interactions = [
                x for x in dataset.interactions if x.user_id not in exclude_users
            ]
    config = base_sample_config(samples, seed)
    splits = make_splits(dataset, config)
    salt = settings.salt()
    audit = {u for u in dataset.users if is_audit_user(salt, u, settings.audit_fraction)}
    splits.train = [s for s in splits.train if s.user_id not in audit]
    catalog = Catalog.of(dataset)
    train_cfg = recipe_default.config(
        epochs=epochs, lr=lr, seed=seed, negatives=negatives, negatives_from=negatives_from
    )
    canaries = [s for s in splits.train if s.user_id in (memorise_users or set())]
    started = time.perf_counter()
    recipe = {
        "backbone": backbone,
        "sample_config": asdict(config),
        "train_config": asdict(train_cfg),
        "train_samples": len(splits.train),
        "memorised_users": len({s.user_id for s in canaries}),
        "repeat": repeat,
        "early_stop": early_stop,
        "audit_fraction": settings.audit_fraction,
        "audit_users": len(audit),
        # Samples after this time were never trained on: unlearning's held-out data.
        "train_until": max(s.timestamp for s in splits.train),
        "users": len(dataset.users),
    }
    trained = train_and_save(
        backbone,
        catalog,
        splits.train + canaries * (repeat - 1),
        splits.valid if early_stop else [],
        {"valid": splits.valid, "test": splits.test},
        train_cfg,
        out,
        {"kind": "e2urec-service-base", **recipe},
        device=settings.device,
        progress=progress,
        on_step=on_step,
        log=log,
    )
    recipe |= {
        "seconds": time.perf_counter() - started,
        "stopped": trained.result.stopped,
        "metrics": trained.metrics,
    }
    metrics = trained.metrics
    log(
        f"trained in {recipe['seconds']:.0f}s: valid AUC {metrics['valid']['auc']:.4f}, "
        f"test AUC {metrics['test']['auc']:.4f}"
    )
    return recipe


def ensure_base_model(
    settings: Settings,
    *,
    backbone: str = "tiny",
    epochs: int | None = None,
    lr: float | None = None,
    samples: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> BaseModelVersion:
    """The active base model, training and registering one first if there is none."""
    with session_scope(settings.db_url, write=False) as session:
        base = active_base(session)
    if base is not None and Path(base.path).is_dir():
        return base
    out = settings.base_model_path
    if out.exists():
        log(f"registering the existing base model folder {out}")
        recipe = {}
    else:
        recipe = train_base(
            settings,
            out,
            backbone=backbone,
            epochs=epochs,
            lr=lr,
            samples=samples,
            seed=seed,
            log=log,
        )
    with session_scope(settings.db_url) as session:
        return register_base(session, out, actor="bootstrap", metrics=recipe)
