"""A trained tiny base and fresh databases holding it, for the worker tests."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from e2urec.data import Catalog, Sample, build_samples
from e2urec.metrics import log_loss
from e2urec.model_store import load_model
from e2urec.scoring import predict_like
from service.core.db.models import ForgetRequest
from service.core.db.session import session_scope
from service.domain.registry import register_base
from tests.service_support import (
    make_settings,
    postgres_database,
    prepare_database,
    redis_or_skip,
    small_dataset,
)


@dataclass
class Trained:
    dataset: object
    base: Path
    recipe: dict

    def samples(self, users: set[int], *, trained: bool) -> list[Sample]:
        """The users' samples inside (trained=True) or after the base's training window."""
        from worker.data import base_sample_config

        until = self.recipe["train_until"]
        return [
            s
            for s in build_samples(self.dataset, base_sample_config(self.recipe))
            if s.user_id in users and (s.timestamp <= until) == trained
        ]


def train_small_base(root: Path) -> Trained:
    """Train the worker tests' base into ``root / "base"``, or reuse the one an earlier call
    finished there (its recipe is written last, so a half-written folder is never reused)."""
    from service.domain.bootstrap import train_base

    dataset = small_dataset(users=60, items=80, per_user=30, seed=7)
    recipe_file = root / "recipe.json"
    if recipe_file.is_file():
        return Trained(dataset, root / "base", json.loads(recipe_file.read_text()))
    shutil.rmtree(root / "base", ignore_errors=True)  # what a failed earlier call left
    with postgres_database() as url:
        prepare_database(url, dataset, None)
        settings = make_settings(url, root)
        recipe = train_base(
            settings,
            root / "base",
            backbone="tiny",
            epochs=4,
            lr=3e-3,
            samples=0,
            seed=0,
            log=lambda _: None,
            progress=False,
        )
    recipe_file.write_text(json.dumps(recipe))
    # Read back, so the process that trained sees the same JSON types as those that reuse.
    return Trained(dataset, root / "base", json.loads(recipe_file.read_text()))


@contextlib.contextmanager
def fresh_world(trained: Trained, data_dir: Path, **overrides) -> Iterator:
    """A new database with the catalogue and the trained base registered, and settings for a
    worker that ticks every second and holds short leases."""
    redis_url = overrides.pop("redis_url", None) or redis_or_skip()
    with postgres_database() as url:
        prepare_database(url, trained.dataset, None)
        with session_scope(url) as session:
            register_base(session, trained.base, actor="test", metrics=trained.recipe)
        values = {
            "redis_url": redis_url,
            "tick_seconds": 1.0,
            "lease_seconds": 6.0,
            "batch_size": 3,
            "batch_max_wait_seconds": 3600.0,
            "resend_after_seconds": 3.0,
            "retain_ratio": 2.0,
            "valid_samples": 300,
            "unlearn_max_epochs": 5,
            "unlearn_min_steps": 30,
            "adapter_poll_seconds": 1.0,
            # These tests are about the lifecycle, on a base that barely memorises: batches of
            # three users, and a gate that refuses a real deletion 1 time in 1,000, not 1 in 20.
            "batch_wait_for_gate_power": False,
            "gate_false_alarm": 0.001,
        } | overrides
        yield make_settings(url, data_dir, **values)


def forget_loss(base: Path, adapter: Path | None, catalog: Catalog, samples: list[Sample]) -> float:
    from peft import PeftModel

    backbone, _ = load_model(base, device="cpu")
    model = backbone.model
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    scores = predict_like(backbone, [catalog.prompt(s) for s in samples], model=model)
    return log_loss([s.label for s in samples], np.asarray(scores))


def request_statuses(url: str) -> dict[str, str]:
    with session_scope(url, write=False) as s:
        return dict(s.execute(select(ForgetRequest.request_id, ForgetRequest.status)).all())
