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
from service.api.main import create_app
from service.core.db.models import AdapterStatus, AdapterVersion, AuditEntry
from service.core.db.session import session_scope
from service.domain.catalog import load_items, user_context
from service.domain.model_changes import publish_model_change
from service.domain.registry import activate_adapter
from tests.service_support import (
    RECOMMEND_KEY,
    LiveServer,
    auth,
    make_settings,
    random_adapter,
    redis_or_skip,
    service_world,
    wait_for,
)

USERS = ["1", "2", "3", "4"]
CANDIDATES = "5,6,7,8,9,10"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with service_world(tmp_path_factory.mktemp("swap")) as w:
        yield w.url, w.base, w.root


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
    # Between activation and the swap this process is behind the registry: those answers are
    # the flagged non-personalised ones (fail closed), never the previous version's scores.
    personal = [r for r in responses if r[2]["personalized"]]
    for _, _, body in responses:
        if not body["personalized"]:
            assert body["model_version"] is None and "not personalised" in body["note"]
    # (popular answers are cheap, so they are many during the short windows: no ratio here)
    versions = {body["model_version"]["adapter"] for _, _, body in personal}
    assert versions >= {None, *folders}
    for user, _, body in personal:
        got = {i["item_id"]: i["score"] for i in body["items"]}
        want = expected[(user, body["model_version"]["adapter"])]
        order = CANDIDATES.split(",")
        np.testing.assert_allclose([got[i] for i in order], want, atol=1e-5)


def test_an_adapter_that_cannot_load_turns_personalisation_off_until_it_loads(world):
    """Fail closed at swap time: the registry's active adapter is corrupt, so this process must
    not keep answering with the previous one (it may still hold users whose deletion the new
    one certified). /ready turns 503, /recommend answers popular items flagged
    non-personalised, the failure is audited and counted, and the load is retried: once the
    folder is whole again the new adapter serves without a restart."""
    url, base, root = world
    good = random_adapter(base, root / "good", seed=21)
    good_id = _register(url, good)
    bad = random_adapter(base, root / "bad", seed=22)
    bad_id = _register(url, bad)
    weights = bad / "adapter_model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(b"truncated")  # checksum no longer matches
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

        def failures():
            with session_scope(url, write=False) as s:
                return s.scalars(
                    select(AuditEntry).where(
                        AuditEntry.entity == "adapter",
                        AuditEntry.entity_id == str(bad_id),
                        AuditEntry.action == "load_failed",
                    )
                ).all()

        entry = wait_for(lambda: len(failures()) >= 2, 15, "failed loads, retried")
        assert entry and "checksum mismatch" in failures()[0].detail["error"]
        ready = httpx.get(f"{server.url}/ready")
        assert ready.status_code == 503
        reason = ready.json()["checks"]["model"]
        assert f"adapter-{bad_id} could not be loaded" in reason
        assert "checksum" not in reason  # internal error text stays in the log and the audit
        r = httpx.get(
            f"{server.url}/recommend",
            params={"user_id": "1", "k": 3},
            headers=auth(RECOMMEND_KEY),
        )
        assert r.status_code == 200
        body = r.json()
        assert body["personalized"] is False and body["model_version"] is None
        assert f"adapter-{bad_id}" in body["note"]
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "e2urec_serving_behind_registry 1.0" in metrics
        assert 'e2urec_unpersonalised_answers_total{reason="model_behind"}' in metrics

        weights.write_bytes(intact)  # the operator restores the folder: the retry loads it
        wait_for(
            lambda: httpx.get(f"{server.url}/ready").status_code == 200,
            30,
            "the repaired adapter to load on a retry",
        )
        r = httpx.get(
            f"{server.url}/recommend",
            params={"user_id": "1", "k": 3},
            headers=auth(RECOMMEND_KEY),
        )
        assert r.json()["personalized"] is True
        assert r.json()["model_version"]["adapter"] == bad_id
        assert "e2urec_serving_behind_registry 0.0" in httpx.get(f"{server.url}/metrics").text


def test_a_fresh_process_whose_active_adapter_is_missing_never_serves_the_bare_base(world):
    """Fail closed at start-up: the base loads but the active adapter's folder is gone. The
    bare base still holds every user forgotten since the last consolidation, so it must not
    answer personalised requests."""
    url, base, root = world
    gone = random_adapter(base, root / "gone", seed=23)
    gone_id = _register(url, gone)
    _activate(url, gone_id)
    import shutil

    shutil.rmtree(gone)
    settings = make_settings(url, root / "data3", adapter_poll_seconds=0.2)
    with LiveServer(create_app(settings)) as server:
        ready = httpx.get(f"{server.url}/ready")
        assert ready.status_code == 503
        assert f"adapter-{gone_id}" in ready.json()["checks"]["model"]
        assert ready.json()["model_version"] == "base-1"  # what the engine holds, unused
        for user in USERS:
            r = httpx.get(
                f"{server.url}/recommend",
                params={"user_id": user, "k": 3, "candidates": CANDIDATES},
                headers=auth(RECOMMEND_KEY),
            )
            assert r.status_code == 200
            assert r.json()["personalized"] is False, r.json()
            assert r.json()["model_version"] is None
