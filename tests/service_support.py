"""Real PostgreSQL, Redis and HTTP for the service tests: the worlds of `service.testing`
(throwaway databases, a small catalogue, a tiny base model folder), skipped without PostgreSQL or
Redis (failed instead in CI), and a uvicorn server on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.testing import (  # noqa: F401  (re-exported: the tests import them from here)
    ADMIN_KEY,
    FORGET_KEY,
    KEYS,
    RECOMMEND_KEY,
    ServiceUnavailable,
    make_settings,
    prepare_database,
    random_adapter,
    small_dataset,
    throwaway_database,
    tiny_base_folder,
)

PG_ADMIN_URL = os.environ.get(
    "E2UREC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("E2UREC_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRED = os.environ.get("E2UREC_REQUIRE_SERVICES") == "1"  # CI: never skip these tests


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unavailable(what: str, exc: Exception):
    message = f"{what} is not reachable ({exc})"
    if REQUIRED:
        pytest.fail(message + "; E2UREC_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@contextlib.contextmanager
def postgres_database(admin_url: str | None = None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards; skips (fails in CI) without one."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_database(admin_url or PG_ADMIN_URL))
        except ServiceUnavailable as exc:
            unavailable("PostgreSQL", exc.__cause__ or exc)
        yield url


def redis_or_skip() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable("Redis", exc)
    return REDIS_URL


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
