"""The README and docs stay true: every setting documented, every command they show exists."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS = (ROOT / "docs" / "settings.md").read_text()


def test_every_setting_is_documented():
    missing = [
        f"E2UREC_{name.upper()}"
        for name in Settings.model_fields
        if f"`E2UREC_{name.upper()}`" not in SETTINGS
    ]
    assert not missing, f"add to the settings table in docs/settings.md: {missing}"


def test_the_service_commands_the_readme_names_exist():
    runner = CliRunner()
    for command in (
        "migrate",
        "import",
        "bootstrap",
        "serve",
        "consolidate",
        "batch-now",
        "settings",
        "trained-users",
    ):
        assert f"e2urec-service {command}" in README, command
        assert runner.invoke(app, [command, "--help"]).exit_code == 0, command


def test_every_script_the_readme_runs_exists():
    root = Path(__file__).resolve().parents[1]
    for script in ("scripts/run-local.sh", "scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in README and (root / script).is_file()


def test_the_settings_table_matches_the_code():
    from service.core.settings import settings_table

    assert settings_table() in SETTINGS, "regenerate it: e2urec-service settings"
