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


def test_only_the_api_keeps_tensors_on_the_heap(config):
    # The API's same-shaped scoring passes bound the memory it keeps; a process that trained
    # keeps its training peak (10.1 GB, beside a 13 GB job: OOM), so the worker keeps glibc's.
    s = config["services"]
    assert s["api"]["environment"]["MALLOC_MMAP_THRESHOLD_"] == "4294967296"
    assert s["api"]["environment"]["MALLOC_TRIM_THRESHOLD_"] == "17179869184"
    for name in ("worker", "control", "beat", "bootstrap"):
        assert not {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(
            s[name]["environment"]
        ), name
    for name in ("api", "worker"):  # the API's own entries did not replace the shared ones
        assert s[name]["environment"]["E2UREC_REDIS_URL"] == "redis://redis:6379/0", name


def test_the_unlearning_worker_has_its_own_memory_limit_and_switch(config):
    # An OOM stays in the worker's container (the job is re-sent, then fails closed), and the
    # operator's memory switch reaches the worker alone.
    s = config["services"]
    assert s["worker"]["mem_limit"] in ("16g", 16 * 2**30)
    assert s["worker"]["environment"]["E2UREC_UNLEARN_ACTIVATION_CHECKPOINTING"] == "auto"
    assert s["worker"]["environment"]["E2UREC_UNLEARN_STUDENT_MODULES"] == "auto"
    assert "mem_limit" not in s["api"]
    assert s["worker"]["environment"]["E2UREC_BACKBONE"] == "tiny"  # the shared ones are kept


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


def test_flower_asks_for_a_login_and_listens_on_loopback_only(config):
    flower = config["services"]["flower"]
    auth = [part for part in flower["command"] if part.startswith("--basic-auth=")]
    assert auth and auth[0] != "--basic-auth=", flower["command"]
    ports = flower["ports"]
    published = [p if isinstance(p, str) else f"{p.get('host_ip')}:{p['published']}" for p in ports]
    assert all(p.startswith("127.0.0.1:") for p in published), published


def test_the_shipped_placeholders_are_refused_and_gen_secrets_writes_good_ones(tmp_path):
    """A deployment that copies .env.example must not start; gen-secrets gives one that does,
    readable by its owner only, different every time."""
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from service.cli import app
    from service.core.settings import Settings

    def values(path: Path) -> dict[str, str]:
        lines = [x for x in path.read_text().splitlines() if x and not x.startswith("#")]
        return dict(x.split("=", 1) for x in lines)

    example = values(ROOT / ".env.example")
    with pytest.raises(ValidationError, match="gen-secrets"):
        Settings(api_keys=example["E2UREC_API_KEYS"])
    with pytest.raises(ValidationError, match="gen-secrets") as refused:
        Settings(user_hash_salt=example["E2UREC_USER_HASH_SALT"])
    assert example["E2UREC_USER_HASH_SALT"] not in str(refused.value)  # never echoed

    runner = CliRunner()
    out = tmp_path / ".env"
    first = runner.invoke(app, ["gen-secrets", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert out.stat().st_mode & 0o777 == 0o600
    fresh = values(out)
    Settings(api_keys=fresh["E2UREC_API_KEYS"], user_hash_salt=fresh["E2UREC_USER_HASH_SALT"])
    assert set(example) <= set(fresh) and fresh["E2UREC_BACKBONE"] == "tiny"
    again = runner.invoke(app, ["gen-secrets", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, ["gen-secrets", "--out", str(out), "--force"]).exit_code == 0
    assert values(out)["E2UREC_USER_HASH_SALT"] != fresh["E2UREC_USER_HASH_SALT"]
    result = compose("config", env_file=out)
    assert result.returncode == 0, result.stderr


def test_a_generated_salt_file_is_readable_by_its_owner_only(tmp_path):
    from service.core.settings import Settings

    salt = Settings(data_dir=tmp_path).salt()
    assert len(salt) == 64
    assert (tmp_path / "user_hash_salt").stat().st_mode & 0o777 == 0o600
