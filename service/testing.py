"""Throwaway worlds for the tests and the benches: a fresh PostgreSQL database, a small synthetic
catalogue, an (untrained) tiny base model folder, a random adapter, and settings for a private
stack. Nothing here imports pytest, so ``bench/`` uses it as the tests do; the tests wrap it to
skip (or fail, in CI) when a service is unreachable.

The API keys below are public development keys: never use them outside a test or a bench."""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import Iterator
from pathlib import Path

ADMIN_KEY = "admin-key-0123456789abcdef"
FORGET_KEY = "forget-key-0123456789abcdef"
RECOMMEND_KEY = "recommend-key-0123456789abc"
KEYS = {
    ADMIN_KEY: ["admin", "forget", "recommend"],
    FORGET_KEY: ["forget"],
    RECOMMEND_KEY: ["recommend"],
}


class ServiceUnavailable(RuntimeError):
    """A backing service (PostgreSQL) could not be reached."""


@contextlib.contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards; raises ``ServiceUnavailable``
    when the server cannot create one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    try:
        # no pool: a test may restart the server, and the drop must not reuse a dead connection
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            name = f"e2urec_test_{uuid.uuid4().hex[:12]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise ServiceUnavailable(f"PostgreSQL is not reachable ({exc})") from exc
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from service.core.db.session import dispose_all

        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def small_dataset(users: int = 40, items: int = 60, per_user: int = 15, seed: int = 5):
    from e2urec.data import SyntheticConfig, generate_synthetic

    return generate_synthetic(
        SyntheticConfig(users=users, items=items, ratings_per_user=per_user, seed=seed)
    )


def tiny_base_folder(dataset, out: Path, *, seed: int = 0) -> Path:
    """An untrained tiny LLMRec saved like `e2urec train` saves one (serving needs a real model
    and tokenizer, not a good one)."""
    from e2urec.backbones import load_backbone
    from e2urec.data import Catalog, SampleConfig, make_splits
    from e2urec.model_store import save_model

    if out.exists():
        return out
    catalog = Catalog.of(dataset)
    splits = make_splits(dataset, SampleConfig(max_samples=None, forget_fraction=0.0))
    backbone = load_backbone(
        "tiny", corpus=catalog.tokenizer_corpus(splits.train), device="cpu", seed=seed
    )
    save_model(backbone, out, {"kind": "test-base"})
    return out


def random_adapter(base_folder: Path, out: Path, seed: int, probes: list | None = None) -> Path:
    """A LoRA with random weights on the base (a fresh LoRA would be the identity)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from e2urec.adapter_files import write_adapter
    from e2urec.lora import attention_qv_targets
    from e2urec.model_store import load_model

    backbone, _ = load_model(base_folder, device="cpu")
    torch.manual_seed(seed)
    model = get_peft_model(
        backbone.model,
        LoraConfig(r=4, lora_alpha=8, target_modules=attention_qv_targets(backbone.model)),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    write_adapter(model, out, {"probes": probes or []})
    return out


def prepare_database(url: str, dataset, base_folder: Path | None) -> None:
    """Migrate, import the catalogue, register the base model."""
    from service.cli import migrate_database
    from service.core.db.session import session_scope
    from service.domain.importer import import_dataset
    from service.domain.registry import register_base

    migrate_database(url)
    with session_scope(url) as session:
        import_dataset(session, dataset, {"format": "synthetic"})
    if base_folder is not None:
        with session_scope(url) as session:
            register_base(session, base_folder, actor="test")


def make_settings(url: str, data_dir: Path, **overrides):
    """Settings for a private stack: the development keys, no Redis unless given, and queue and
    channel names no other test's or bench's worker listens on."""
    from service.core.settings import Settings

    values = {
        "data_dir": data_dir,
        "database_url": url,
        "redis_url": "",
        "api_keys": copy.deepcopy(KEYS),
        "adapter_poll_seconds": 0.2,
        "user_hash_salt": "test-salt-0123456789",
        "max_wait_ms": 2.0,
    }
    private = uuid.uuid4().hex[:8]
    values |= {
        "model_channel": f"e2urec:test:{private}",
        "queue_unlearning": f"e2urec.test.{private}.unlearning",
        "queue_control": f"e2urec.test.{private}.control",
    }
    values.update(overrides)
    return Settings(**values)
