"""Real PostgreSQL, Redis and HTTP for the service tests: throwaway databases, a small catalogue,
a tiny base model folder, and a uvicorn server on a free port."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

PG_ADMIN_URL = os.environ.get(
    "E2UREC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("E2UREC_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRED = os.environ.get("E2UREC_REQUIRE_SERVICES") == "1"  # CI: never skip these tests
ADMIN_KEY = "admin-key-0123456789abcdef"
FORGET_KEY = "forget-key-0123456789abcdef"
RECOMMEND_KEY = "recommend-key-0123456789abc"
KEYS = {
    ADMIN_KEY: ["admin", "forget", "recommend"],
    FORGET_KEY: ["forget"],
    RECOMMEND_KEY: ["recommend"],
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unavailable(what: str, exc: Exception):
    message = f"{what} is not reachable ({exc})"
    if REQUIRED:
        pytest.fail(message + "; E2UREC_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@contextlib.contextmanager
def postgres_database(admin_url: str | None = None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin_url = admin_url or PG_ADMIN_URL
    try:
        # no pool: a test may restart the server, and the drop must not reuse a dead connection
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            name = f"e2urec_test_{uuid.uuid4().hex[:12]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from service.core.db.session import dispose_all

        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_or_skip() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable("Redis", exc)
    return REDIS_URL


def small_dataset(users: int = 40, items: int = 60, per_user: int = 15, seed: int = 5):
    from e2urec.data import SyntheticConfig, generate_synthetic

    return generate_synthetic(
        SyntheticConfig(users=users, items=items, ratings_per_user=per_user, seed=seed)
    )


def tiny_base_folder(dataset, out: Path, *, seed: int = 0) -> Path:
    """An untrained tiny LLMRec saved like `e2urec train` saves one (serving tests need a real
    model and tokenizer, not a good one)."""
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


@dataclass
class ServiceWorld:
    url: str  # the database
    base: Path  # the registered base model folder
    root: Path  # a folder for the test's files
    dataset: object


@contextlib.contextmanager
def service_world(root: Path, dataset=None) -> Iterator[ServiceWorld]:
    """The world the service tests share: a throwaway PostgreSQL database holding a small
    synthetic catalogue and an (untrained) tiny base model registered as active."""
    dataset = dataset or small_dataset()
    base = tiny_base_folder(dataset, root / "base")
    with postgres_database() as url:
        prepare_database(url, dataset, base)
        yield ServiceWorld(url, base, root, dataset)


def make_settings(url: str, data_dir: Path, **overrides):
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
    private = uuid.uuid4().hex[:8]  # no message of one test can reach another test's worker
    values |= {
        "model_channel": f"e2urec:test:{private}",
        "queue_unlearning": f"e2urec.test.{private}.unlearning",
        "queue_control": f"e2urec.test.{private}.control",
    }
    values.update(overrides)
    return Settings(**values)


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
):
    """Poll until ``predicate()`` is truthy; fail with ``what`` (and ``explain()``, e.g. the
    logs of the processes involved) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The app under a real uvicorn server on a free port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 60, "uvicorn to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
