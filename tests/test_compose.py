"""The compose file parses (Debian's docker-compose) and says what the stack needs to be safe."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.service_support import REQUIRED

ROOT = Path(__file__).resolve().parents[1]


def compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        if REQUIRED:
            pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2UREC_")}
    extra = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [binary, *extra, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    result = compose("config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_stack_has_every_part(config):
    assert set(config["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "bootstrap",
        "api",
        "worker",
        "control",
        "beat",
        "flower",
    }


def test_long_running_services_have_health_checks(config):
    for name in ("postgres", "redis", "api", "worker", "control", "flower"):
        assert config["services"][name].get("healthcheck", {}).get("test"), name


def test_start_order_migrates_before_the_api_starts(config):
    s = config["services"]
    assert s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert s["bootstrap"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert s["api"]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "control", "beat"):
        assert s[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_is_append_only_and_never_evicts(config):
    command = " ".join(config["services"]["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_api_and_workers_share_the_model_registry(config):
    def mounts(name: str) -> set[str]:
        return {
            f"{v['source']}:{v['target']}" if isinstance(v, dict) else v
            for v in config["services"][name]["volumes"]
        }

    for name in ("api", "worker", "bootstrap"):
        assert {"models:/data", "models:/data:rw"} & mounts(name), name


def test_the_unlearning_worker_takes_one_job_at_a_time(config):
    command = config["services"]["worker"]["command"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("--prefetch-multiplier") + 1] == "1"
    assert "e2urec.unlearning" in command


def test_missing_secrets_stop_the_stack_with_a_message(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose("config", env_file=empty)
    assert result.returncode != 0
    assert "E2UREC_API_KEYS" in result.stderr or "E2UREC_USER_HASH_SALT" in result.stderr


def test_the_gpu_override_reserves_a_gpu_for_the_worker(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    result = compose(
        "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config", env_file=env_file
    )
    assert result.returncode == 0, result.stderr
    worker = yaml.safe_load(result.stdout)["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert (
        devices[0]["capabilities"] == ["gpu"] and worker["environment"]["E2UREC_DEVICE"] == "cuda"
    )


def test_the_dockerfile_copies_what_exists():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert "torch==2.13.0" in text  # pinned: an open range pulls a multi-GB CUDA build
