"""Alembic environment: the URL comes from the caller (``sqlalchemy.url``) or the settings."""

from __future__ import annotations

from alembic import context

from service.core.db.models import Base, UTCDateTime
from service.core.db.session import make_engine
from service.core.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().db_url


def render_item(type_, obj, autogen_context):
    # UTCDateTime only converts values in Python; in the schema it is a timestamptz.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection, url: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=url.startswith("sqlite"),  # SQLite alters tables by copying them
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = _url()
    given = config.attributes.get("connection")  # e2urec-service migrate passes one, locked
    if given is not None:
        _migrate(given, url)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _migrate(connection, url)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
