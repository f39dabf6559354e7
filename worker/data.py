"""What an unlearning job trains on, built from the database at the time it runs."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from e2urec.data import Catalog, Sample, SampleConfig, build_samples
from e2urec.unlearn import UnlearnTask
from service.core.db.models import BaseModelVersion, User
from service.core.security import is_audit_user
from service.core.settings import Settings
from service.domain.catalog import dataset_from_db


@dataclass
class JobData:
    catalog: Catalog
    forget: list[Sample]  # may be empty: users whose data the base never trained on
    retain: list[Sample]
    audit: list[Sample]  # training-period samples of users the base never trained on
    valid: list[Sample]  # after the training window: utility (AUC) checks
    train_until: int

    def task(self) -> UnlearnTask:
        # The stop rule's "held-out level" is the audit users': same period, never trained. Its
        # AUC bound uses the very samples the quality gate judges, so a run the stop rule lets
        # through is not then refused by the gate for the same bound on other data.
        return UnlearnTask(self.catalog, self.retain, self.forget, self.valid, self.audit or None)


def base_sample_config(recipe: dict) -> SampleConfig:
    """The prompt settings the base was trained with (history length, like threshold), from
    the recipe recorded with it."""
    recipe = recipe.get("sample_config", {})
    return SampleConfig(
        history_len=recipe.get("history_len", 10),
        like_threshold=recipe.get("like_threshold", 3.0),
        max_samples=None,
        forget_fraction=0.0,
    )


def build_job_data(
    session: Session, base: BaseModelVersion, forget_users: set[int], settings: Settings, seed: int
) -> JobData:
    """Forget: the samples of this job's users that the base trained on. Retain: a random sample
    of everyone else's training samples. Held-out: samples after the base's training window.
    Users waiting in other requests are in neither (they are quarantined: never used)."""
    dataset = dataset_from_db(session, include_quarantined=True)
    quarantined = set(session.scalars(select(User.id).where(User.quarantined_at.is_not(None))))
    samples = build_samples(dataset, base_sample_config(base.metrics or {}))
    if not samples:
        raise ValueError("the catalogue has no samples to train on")
    train_until = (base.metrics or {}).get("train_until")
    if train_until is None:  # a base registered without its recipe: assume a 60% window
        times = sorted(s.timestamp for s in samples)
        train_until = times[int(len(times) * 0.6)]
    excluded = quarantined | forget_users
    fraction = (base.metrics or {}).get("audit_fraction", 0.0)
    salt = settings.salt()
    audit_users = {u for u in dataset.users if is_audit_user(salt, u, fraction)} - excluded
    window = [s for s in samples if s.timestamp <= train_until]
    forget = [s for s in window if s.user_id in forget_users and s.user_id not in audit_users]
    pool = [s for s in window if s.user_id not in excluded | audit_users]
    audit = [s for s in window if s.user_id in audit_users]
    later = [s for s in samples if s.timestamp > train_until and s.user_id not in excluded]
    rng = random.Random(seed)
    n_retain = min(
        len(pool), settings.retain_max, max(64, int(settings.retain_ratio * len(forget)))
    )
    retain = rng.sample(pool, n_retain)
    valid = rng.sample(later, min(len(later), settings.valid_samples))
    if len(valid) < 20:
        raise ValueError(
            f"only {len(valid)} held-out samples after the base's training window; the checks "
            "need more (import more data or retrain the base on an earlier window)"
        )
    audit = rng.sample(audit, min(len(audit), settings.valid_samples))
    return JobData(Catalog.of(dataset), forget, retain, audit, valid, train_until)
