"""Schema through Alembic only, the import command, and the embedded SQLite mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, inspect, select
from typer.testing import CliRunner

from service.api.main import create_app
from service.cli import ROOT, app, migrate_database
from service.core.db.models import Base, Interaction, Item, User
from service.core.db.session import session_scope
from tests.service_support import (
    FORGET_KEY,
    RECOMMEND_KEY,
    auth,
    make_settings,
    postgres_database,
    prepare_database,
    small_dataset,
    tiny_base_folder,
)


def _alembic(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    return config


def _check_roundtrip(url: str) -> None:
    migrate_database(url)
    tables = set(inspect(create_engine(url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    command.check(_alembic(url))  # the models and the migrations describe the same schema
    command.downgrade(_alembic(url), "base")
    assert set(inspect(create_engine(url)).get_table_names()) <= {"alembic_version"}
    migrate_database(url)


def test_migrations_roundtrip_on_postgres():
    with postgres_database() as url:
        _check_roundtrip(url)


def test_migrations_roundtrip_on_sqlite(tmp_path):
    _check_roundtrip(f"sqlite:///{tmp_path / 'e2urec.db'}")


def test_import_command_loads_a_dataset_once(tmp_path, ml100k_dir, monkeypatch):
    with postgres_database() as url:
        monkeypatch.setenv("E2UREC_DATABASE_URL", url)
        monkeypatch.setenv("E2UREC_DATA_DIR", str(tmp_path))
        from service.core.settings import get_settings

        get_settings.cache_clear()
        try:
            runner = CliRunner()
            first = runner.invoke(app, ["import", "--path", str(ml100k_dir)])
            assert first.exit_code == 0, first.output
            assert "imported 2 users, 2 items and 3 interactions" in first.output
            again = runner.invoke(app, ["import", "--path", str(ml100k_dir)])
            assert again.exit_code == 2
            assert "already holds a catalogue" in again.output
            assert "Traceback" not in again.output
            with session_scope(url, write=False) as s:
                assert s.scalar(select(func.count()).select_from(Interaction)) == 3
                titles = set(s.scalars(select(Item.title)))
            assert "Café au lait (1993)" in titles  # latin-1 decoded on the way in
        finally:
            get_settings.cache_clear()


def test_import_of_a_broken_file_writes_nothing(tmp_path, ml100k_dir, monkeypatch):
    (ml100k_dir / "u.data").write_text("1\t1\t5\t881250949\n1\tnot-an-item\t2\t881250950\n")
    url = f"sqlite:///{tmp_path / 'e2urec.db'}"
    monkeypatch.setenv("E2UREC_DATABASE_URL", url)
    from service.core.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["import", "--path", str(ml100k_dir)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "u.data:2" in result.output
    with session_scope(url, write=False) as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0


def test_the_embedded_default_runs_on_a_sqlite_file(tmp_path):
    dataset = small_dataset(users=20, items=30, per_user=10)
    url = f"sqlite:///{tmp_path / 'e2urec.db'}"
    prepare_database(url, dataset, tiny_base_folder(dataset, tmp_path / "base"))
    with TestClient(create_app(make_settings(url, tmp_path))) as client:
        r = client.get("/recommend", params={"user_id": "3", "k": 4}, headers=auth(RECOMMEND_KEY))
        assert r.status_code == 200 and len(r.json()["items"]) == 4
        first = client.post("/forget/3", headers=auth(FORGET_KEY))
        again = client.post("/forget/3", headers=auth(FORGET_KEY))
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json()["request_id"] == again.json()["request_id"]
        r = client.get("/recommend", params={"user_id": "3"}, headers=auth(RECOMMEND_KEY))
        assert r.json()["personalized"] is False


@pytest.mark.parametrize("args", [["--help"], ["migrate", "--help"], ["import", "--help"]])
def test_cli_help(args):
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and "Usage" in result.stdout


def test_concurrent_migrations_take_turns():
    """Several API containers start at once, each migrating: the advisory lock serialises them."""
    from concurrent.futures import ThreadPoolExecutor

    with postgres_database() as url:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: migrate_database(url), range(4)))
        command.check(_alembic(url))
