"""No log line holds a raw user id: the access log of a real server shows hashes only."""

from __future__ import annotations

import subprocess
import sys

import httpx

from service.core.log_privacy import redact
from service.core.security import user_hash
from tests.service_support import (
    FORGET_KEY,
    KEYS,
    RECOMMEND_KEY,
    auth,
    free_port,
    make_settings,
    postgres_database,
    prepare_database,
    small_dataset,
    wait_for,
)
from tests.worker_support import ROOT, worker_env


def _fake_hash(external_id: str) -> str:
    return f"{abs(hash(external_id)):016x}"


def test_paths_and_queries_lose_their_user_ids():
    h = _fake_hash("17")
    assert redact("/forget/17", _fake_hash) == f"/forget/u:{h}"
    assert redact("/forget/requests/0a1b", _fake_hash) == "/forget/requests/0a1b"
    got = redact("/recommend?k=3&user_id=17&candidates=1,2", _fake_hash)
    assert got == f"/recommend?k=3&user_id=u:{h}&candidates=1,2"
    assert redact("/health", _fake_hash) == "/health"


def test_the_access_log_of_a_real_server_holds_no_raw_user_id(tmp_path):
    with postgres_database() as url:
        prepare_database(url, small_dataset(), None)
        settings = make_settings(url, tmp_path / "var")
        logs = tmp_path / "var" / "logs"
        logs.mkdir(parents=True)
        port = free_port()
        keys = ",".join(f"{k}:{'+'.join(v)}" for k, v in KEYS.items())
        env = worker_env(settings) | {"E2UREC_API_KEYS": keys, "E2UREC_REDIS_URL": ""}
        with (logs / "api.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                base = f"http://127.0.0.1:{port}"

                def up() -> bool:
                    try:
                        return httpx.get(f"{base}/health", timeout=2).status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_for(up, 60, "the API to start")
                r = httpx.post(f"{base}/forget/17", headers=auth(FORGET_KEY))
                assert r.status_code == 202
                rid = r.json()["request_id"]
                assert httpx.get(f"{base}/forget/requests/{rid}", headers=auth(FORGET_KEY))
                r = httpx.get(
                    f"{base}/recommend", params={"user_id": "17"}, headers=auth(RECOMMEND_KEY)
                )
                assert r.status_code == 200 and r.json()["personalized"] is False
                assert httpx.post(f"{base}/forget/31", headers=auth(FORGET_KEY)).status_code
            finally:
                proc.terminate()
                proc.wait(30)
        text = (logs / "api.log").read_text()
        assert "POST /forget/" in text  # the access log is on
        for raw in ("17", "31"):
            assert f"/forget/{raw} " not in text and f"user_id={raw}" not in text, text
            token = "u:" + user_hash(settings.salt(), raw)[:16]
            assert token in text
