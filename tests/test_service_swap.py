"""Hot-swapping adapters in a live server while clients keep asking for recommendations."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from peft import PeftModel
from sqlalchemy import select

from e2urec.data.prompts import Prompt, target_suffix, user_prefix
from e2urec.model_store import load_model
from e2urec.scoring import predict_like
from service.catalog import load_items, user_context
from service.db.models import AdapterStatus, AdapterVersion, AuditEntry
from service.db.session import session_scope
from service.main import create_app
from service.model_sync import publish_model_change
from service.registry import activate_adapter
from tests.service_support import (
    RECOMMEND_KEY,
    LiveServer,
    auth,
    make_settings,
    postgres_database,
    prepare_database,
    random_adapter,
    redis_or_skip,
    small_dataset,
    tiny_base_folder,
    wait_for,
)

USERS = ["1", "2", "3", "4"]
CANDIDATES = "5,6,7,8,9,10"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dataset = small_dataset()
    root = tmp_path_factory.mktemp("swap")
    base = tiny_base_folder(dataset, root / "base")
    with postgres_database() as url:
        prepare_database(url, dataset, base)
        yield url, base, root


def _prompts(url: str, user: str) -> list[Prompt]:
    with session_scope(url, write=False) as s:
        ctx = user_context(s, user, history_len=10, recent=20)
        items = load_items(s)
    prefix = user_prefix(ctx.profile, [(items[i], r) for i, r in ctx.history], "movie")
    return [Prompt(prefix, target_suffix(items[int(i)])) for i in CANDIDATES.split(",")]


def _expected(base_folder, adapter_folder, prompts) -> np.ndarray:
    backbone, _ = load_model(base_folder, device="cpu")
    model = backbone.model
    if adapter_folder is not None:
        model = PeftModel.from_pretrained(model, str(adapter_folder)).eval()
    return predict_like(backbone, prompts, model=model)


def _register(url: str, folder, base_id: int = 1, probes=None) -> int:
    from e2urec.adapter_files import read_adapter

    files = read_adapter(folder)
    with session_scope(url) as s:
        row = AdapterVersion(
            base_model_id=base_id,
            path=str(folder),
            checksum=files.checksum,
            status=AdapterStatus.ready,
            probes=probes or [],
        )
        s.add(row)
        s.flush()
        return row.id


def _activate(url: str, version: int) -> None:
    with session_scope(url) as s:
        activate_adapter(s, s.get(AdapterVersion, version), actor="test")


def _probes(base_folder, adapter_folder, prompts) -> list[dict]:
    values = _expected(base_folder, adapter_folder, prompts[:3])
    return [
        {"prefix": p.prefix, "suffix": p.suffix, "p_like": float(v)}
        for p, v in zip(prompts[:3], values, strict=True)
    ]


def test_swaps_under_load_fail_nothing_and_each_response_names_its_scorer(world):
    url, base, root = world
    redis_url = redis_or_skip()
    prompts = {u: _prompts(url, u) for u in USERS}
    folders = {}
    for k in range(3):
        folder = random_adapter(base, root / f"adapter-{k}", seed=10 + k)
        version = _register(url, folder, probes=_probes(base, folder, prompts["1"]))
        folders[version] = folder
    expected = {(u, None): _expected(base, None, prompts[u]) for u in USERS}
    for version, folder in folders.items():
        expected |= {(u, version): _expected(base, folder, prompts[u]) for u in USERS}

    # Polling every 60 s: only the Redis notice can make the swaps this quick.
    settings = make_settings(url, root / "data", redis_url=redis_url, adapter_poll_seconds=60)
    responses: list[tuple[str, int, dict]] = []
    errors: list[str] = []
    stop = threading.Event()

    with LiveServer(create_app(settings)) as server:

        def client(k: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                n = 0
                while not stop.is_set():
                    user = USERS[(k + n) % len(USERS)]
                    n += 1
                    try:
                        r = c.get(
                            "/recommend",
                            params={"user_id": user, "k": 6, "candidates": CANDIDATES},
                            headers=auth(RECOMMEND_KEY),
                        )
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text}")
                    else:
                        responses.append((user, r.status_code, r.json()))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(responses) > 8, 30, "traffic on the base model")
            for version in [*folders, *list(folders)[:1]]:  # the first one a second time
                started = time.monotonic()
                _activate(url, version)
                assert publish_model_change(settings, str(version))
                wait_for(
                    lambda v=version: (
                        httpx.get(f"{server.url}/ready").json()["model_version"]
                        == f"base-1/adapter-{v}"
                    ),
                    10,
                    f"adapter {version} to serve after the notice",
                )
                assert time.monotonic() - started < 10
                n = len(responses)
                wait_for(lambda n=n: len(responses) > n + 8, 30, "traffic on the new version")
        finally:
            stop.set()
            for t in threads:
                t.join()

    assert not errors, errors[:5]
    versions = {body["model_version"]["adapter"] for _, _, body in responses}
    assert versions >= {None, *folders}
    for user, _, body in responses:
        got = {i["item_id"]: i["score"] for i in body["items"]}
        want = expected[(user, body["model_version"]["adapter"])]
        order = CANDIDATES.split(",")
        np.testing.assert_allclose([got[i] for i in order], want, atol=1e-5)


def test_a_bad_adapter_is_recorded_and_the_old_one_keeps_serving(world):
    url, base, root = world
    good = random_adapter(base, root / "good", seed=21)
    good_id = _register(url, good)
    bad = random_adapter(base, root / "bad", seed=22)
    bad_id = _register(url, bad)
    (bad / "adapter_model.safetensors").write_bytes(b"truncated")  # checksum no longer matches
    settings = make_settings(url, root / "data2", adapter_poll_seconds=0.2)  # polling only
    with LiveServer(create_app(settings)) as server:
        _activate(url, good_id)
        wait_for(
            lambda: (
                httpx.get(f"{server.url}/ready").json()["model_version"]
                == f"base-1/adapter-{good_id}"
            ),
            15,
            "the good adapter, by polling",
        )
        _activate(url, bad_id)

        def failure_recorded():
            with session_scope(url, write=False) as s:
                return s.scalars(
                    select(AuditEntry).where(
                        AuditEntry.entity == "adapter",
                        AuditEntry.entity_id == str(bad_id),
                        AuditEntry.action == "load_failed",
                    )
                ).first()

        entry = wait_for(failure_recorded, 15, "the failed load to be recorded")
        assert "checksum mismatch" in entry.detail["error"]
        r = httpx.get(
            f"{server.url}/recommend",
            params={"user_id": "1", "k": 3},
            headers=auth(RECOMMEND_KEY),
        )
        assert r.status_code == 200
        assert r.json()["model_version"]["adapter"] == good_id
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'e2urec_model_swaps_total{result="failed"} 1.0' in metrics
