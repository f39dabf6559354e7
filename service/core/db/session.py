"""Engines and sessions. PostgreSQL in production, a SQLite file in the embedded mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    if not is_sqlite(url):
        # hide_parameters: error texts (logged, sometimes raised) never carry a user's id
        return create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True
        )
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        # SQLAlchemy issues BEGIN itself (below); WAL lets readers run beside a writer; foreign
        # keys are off by default in SQLite.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        # SQLite has no row locks. Writers take the write lock up front (IMMEDIATE) so that
        # read-then-write transactions serialise instead of failing to upgrade; readers don't.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


_ENGINES: dict[tuple[str, bool], Engine] = {}
_FACTORIES: dict[tuple[str, bool], sessionmaker[Session]] = {}


def engine_for(url: str, *, write: bool = True) -> Engine:
    """One pooled engine per URL (two for SQLite: writers begin IMMEDIATE, readers do not)."""
    key = (url, write and is_sqlite(url))
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(url, immediate=key[1])
    return _ENGINES[key]


def session_factory(url: str, *, write: bool = True) -> sessionmaker[Session]:
    key = (url, write and is_sqlite(url))
    if key not in _FACTORIES:
        _FACTORIES[key] = sessionmaker(engine_for(url, write=write), expire_on_commit=False)
    return _FACTORIES[key]


@contextmanager
def session_scope(url: str, *, write: bool = True) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with session_factory(url, write=write)() as session, session.begin():
        yield session


def dispose_all() -> None:
    """Drop every pooled connection (after a fork, or when a test is done with a database)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _FACTORIES.clear()
