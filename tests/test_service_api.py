"""The API against a real PostgreSQL: forget lifecycle, idempotency, quarantine, auth, inputs."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.main import create_app
from service.core.db.models import AuditEntry, ForgetRequest, Interaction, RequestStatus, User
from service.core.db.session import session_scope
from service.domain.forget import transition
from tests.service_support import (
    ADMIN_KEY,
    FORGET_KEY,
    RECOMMEND_KEY,
    LiveServer,
    auth,
    make_settings,
    service_world,
    small_dataset,
)


@pytest.fixture(scope="module")
def dataset():
    return small_dataset()


@pytest.fixture(scope="module")
def db(dataset, tmp_path_factory):
    with service_world(tmp_path_factory.mktemp("models"), dataset) as world:
        yield world.url


@pytest.fixture(scope="module")
def settings(db, tmp_path_factory):
    return make_settings(db, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def _users(db) -> list[str]:
    with session_scope(db, write=False) as s:
        return list(s.scalars(select(User.external_id).order_by(User.id)))


# -- auth -----------------------------------------------------------------------------------


def test_keys_and_scopes(client):
    assert client.post("/forget/1").status_code == 401
    r = client.post("/forget/1", headers=auth("not-a-real-key-at-all"))
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/forget/1", headers=auth(RECOMMEND_KEY))
    assert r.status_code == 403 and "forget" in r.json()["detail"]
    r = client.get("/recommend", params={"user_id": "1"}, headers=auth(FORGET_KEY))
    assert r.status_code == 403 and "recommend" in r.json()["detail"]
    assert client.get("/health").status_code == 200  # liveness needs no key


def test_no_configured_keys_means_no_access(db, tmp_path):
    app = create_app(make_settings(db, tmp_path, api_keys={}))
    with TestClient(app) as c:
        r = c.get("/recommend", params={"user_id": "1"}, headers=auth(RECOMMEND_KEY))
    assert r.status_code == 401 and "E2UREC_API_KEYS" in r.json()["detail"]


# -- inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"user_id": "1", "k": 0}, 422, "greater than or equal to 1"),
        ({"user_id": "1", "k": 101}, 422, "at most 100"),
        ({"user_id": "x/../y"}, 422, "pattern"),
        ({"user_id": "1", "k": "many"}, 422, "valid integer"),
        ({"user_id": "999999"}, 404, "unknown user"),
        ({"user_id": "1", "candidates": "1,2,nope!"}, 422, "malformed item id"),
        ({"user_id": "1", "candidates": "1,2,99999"}, 404, "unknown item id"),
        ({"user_id": "1", "candidates": ",".join(map(str, range(1, 300)))}, 422, "at most 200"),
        ({"user_id": "1", "candidates": ","}, 422, "empty"),
    ],
)
def test_bad_recommend_input_gets_a_clear_4xx(client, params, status, fragment):
    r = client.get("/recommend", params=params, headers=auth(RECOMMEND_KEY))
    assert r.status_code == status, r.text
    assert fragment in r.text


def test_bad_forget_input_gets_a_clear_4xx(client):
    r = client.post("/forget/999999", headers=auth(FORGET_KEY))
    assert r.status_code == 404 and "unknown user" in r.json()["detail"]
    assert client.post("/forget/a%20b", headers=auth(FORGET_KEY)).status_code == 422
    r = client.get("/forget/requests/not-a-uuid", headers=auth(FORGET_KEY))
    assert r.status_code == 422
    missing = "00000000-0000-4000-8000-000000000000"
    r = client.get(f"/forget/requests/{missing}", headers=auth(FORGET_KEY))
    assert r.status_code == 404 and missing in r.json()["detail"]


# -- recommendations ------------------------------------------------------------------------


def test_recommendations_are_scored_unseen_items(client, db):
    user = _users(db)[0]
    r = client.get("/recommend", params={"user_id": user, "k": 5}, headers=auth(RECOMMEND_KEY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["personalized"] and body["model_version"]["label"] == "base-1"
    assert len(body["items"]) == 5
    scores = [i["score"] for i in body["items"]]
    assert all(0 < s < 1 for s in scores)
    # ordered by the stage's score times P(like) (E2UREC_RANK_BY=blend, the default)
    stages = [i["stage_score"] for i in body["items"]]
    assert all(s > 0 for s in stages), stages
    keys = [math.log(st) + math.log(sc) for st, sc in zip(stages, scores, strict=True)]
    assert all(a >= b - 1e-9 for a, b in zip(keys, keys[1:], strict=False)), keys
    with session_scope(db, write=False) as s:
        seen = set(
            s.scalars(select(Interaction.item_id).join(User).where(User.external_id == user))
        )
    assert not {int(i["item_id"]) for i in body["items"]} & seen
    explicit = [i["item_id"] for i in body["items"][:3]][::-1]
    r = client.get(
        "/recommend",
        params={"user_id": user, "k": 3, "candidates": ",".join(explicit)},
        headers=auth(RECOMMEND_KEY),
    )
    again = {i["item_id"]: i["score"] for i in r.json()["items"]}
    assert set(again) == set(explicit) and all(i["source"] == "explicit" for i in r.json()["items"])
    # explicit candidates have no stage score: P(like) alone orders them
    assert all(i["stage_score"] is None for i in r.json()["items"])
    ordered = list(again.values())
    assert all(a >= b - 1e-9 for a, b in zip(ordered, ordered[1:], strict=False)), ordered
    for item in body["items"][:3]:  # the same model scores the same prompt the same way
        assert again[item["item_id"]] == pytest.approx(item["score"], abs=1e-5)


# -- forgetting -------------------------------------------------------------------------------


def test_forget_lifecycle_is_recorded_step_by_step(client, db):
    user = _users(db)[1]
    r = client.post(f"/forget/{user}", headers=auth(FORGET_KEY))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending" and body["user_id"] == user
    assert r.headers["location"] == body["status_url"]
    status = client.get(body["status_url"], headers=auth(FORGET_KEY)).json()
    assert status["status"] == "pending" and status["batch"] is None

    with session_scope(db) as s:  # what the worker does (issue: the unlearning worker)
        request = s.scalars(
            select(ForgetRequest).where(ForgetRequest.request_id == body["request_id"])
        ).one()
        for step in (RequestStatus.scheduled, RequestStatus.running, RequestStatus.completed):
            transition(s, request, step, actor="test-worker")
        with pytest.raises(ValueError, match="not allowed"):
            transition(s, request, RequestStatus.pending, actor="test-worker")
    done = client.get(body["status_url"], headers=auth(FORGET_KEY)).json()
    assert done["status"] == "completed"
    assert done["created_at"] <= done["scheduled_at"] <= done["started_at"] <= done["completed_at"]
    with session_scope(db, write=False) as s:
        trail = s.execute(
            select(AuditEntry.from_status, AuditEntry.to_status)
            .where(AuditEntry.entity_id == body["request_id"])
            .order_by(AuditEntry.id)
        ).all()
    assert trail == [
        (None, "pending"),
        ("pending", "scheduled"),
        ("scheduled", "running"),
        ("running", "completed"),
    ]


def test_concurrent_duplicate_requests_make_one_row(settings, db):
    """Twenty clients ask to forget the same user at once, through a real server."""
    user = _users(db)[2]
    with LiveServer(create_app(settings)) as server:
        barrier = threading.Barrier(20)

        def post(_):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                barrier.wait()
                return c.post(f"/forget/{user}", headers=auth(FORGET_KEY))

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(post, range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len({r.json()["request_id"] for r in responses}) == 1
    with session_scope(db, write=False) as s:
        rows = s.scalar(
            select(func.count())
            .select_from(ForgetRequest)
            .join(User)
            .where(User.external_id == user)
        )
        accepted = s.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(
                AuditEntry.entity_id == responses[0].json()["request_id"],
                AuditEntry.action == "accepted",
            )
        )
    assert rows == 1 and accepted == 1


def test_quarantine_stops_using_the_history_at_once_everywhere(settings, db, dataset):
    """After the forget request commits, the user gets non-personalised results and no other
    user's candidates come from their ratings, in this process and in another one."""
    # An item only the forgotten user rated: it can reach others only through that user.
    raters: dict[int, set[int]] = {}
    for x in dataset.interactions:
        raters.setdefault(x.item_id, set()).add(x.user_id)
    with session_scope(settings.db_url, write=False) as s:
        quarantined = set(s.scalars(select(User.id).where(User.quarantined_at.is_not(None))))
    target = next(
        u
        for u in sorted(dataset.users)
        if u not in quarantined
        and any(raters[i] == {u} for i in raters)
        and u not in {int(x) for x in _users(db)[:3]}
    )
    solo_items = {str(i) for i, who in raters.items() if who == {target}}
    other = next(
        x.user_id
        for x in dataset.interactions
        if x.user_id not in quarantined | {target}
        and {i for i, w in raters.items() if target in w} & {x.item_id}
    )
    params = {"user_id": str(other), "k": 60}
    overrides = {"candidate_pool": 60}

    wide = settings.model_copy(update=overrides)
    with TestClient(create_app(wide)) as a, TestClient(create_app(wide)) as b:
        before = a.get("/recommend", params=params, headers=auth(RECOMMEND_KEY)).json()
        assert solo_items & {i["item_id"] for i in before["items"]}, "precondition"
        mine = a.get("/recommend", params={"user_id": str(target)}, headers=auth(RECOMMEND_KEY))
        assert mine.json()["personalized"] is True

        assert a.post(f"/forget/{target}", headers=auth(FORGET_KEY)).status_code == 202

        for c in (a, b):  # b learns of the request only from the database
            after = c.get("/recommend", params=params, headers=auth(RECOMMEND_KEY)).json()
            assert not solo_items & {i["item_id"] for i in after["items"]}
            mine = c.get(
                "/recommend", params={"user_id": str(target)}, headers=auth(RECOMMEND_KEY)
            ).json()
            assert mine["personalized"] is False and mine["model_version"] is None
            assert not solo_items & {i["item_id"] for i in mine["items"]}


def test_a_forgotten_users_repeat_request_returns_the_completed_one(client, db):
    """Once the data is deleted only the salted hash is left; a repeat finds the request."""
    user = _users(db)[3]
    first = client.post(f"/forget/{user}", headers=auth(FORGET_KEY)).json()
    with session_scope(db) as s:
        request = s.scalars(
            select(ForgetRequest).where(ForgetRequest.request_id == first["request_id"])
        ).one()
        for step in (RequestStatus.scheduled, RequestStatus.running, RequestStatus.completed):
            transition(s, request, step, actor="test-worker")
        s.delete(s.scalars(select(User).where(User.external_id == user)).one())
    r = client.post(f"/forget/{user}", headers=auth(FORGET_KEY))
    assert r.status_code == 200
    assert r.json()["request_id"] == first["request_id"] and r.json()["user_id"] is None
    with session_scope(db, write=False) as s:
        assert not s.scalar(
            select(func.count()).select_from(Interaction).where(Interaction.user_id == int(user))
        )


# -- operations -----------------------------------------------------------------------------


def test_ready_and_metrics(client):
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    client.get("/recommend", params={"user_id": "1"}, headers=auth(RECOMMEND_KEY))
    text = client.get("/metrics").text
    assert 'e2urec_http_requests_total{method="GET",route="/recommend",status="200"}' in text
    assert "e2urec_forget_requests_open" in text
    assert "e2urec_active_base_version 1.0" in text
    assert "e2urec_engine_batch_rows_bucket" in text


def test_openapi_documents_every_route_and_its_security(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/forget/{user_id}", "/forget/requests/{request_id}", "/recommend", "/ready"):
        assert path in paths
    assert paths["/forget/{user_id}"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "404" in paths["/recommend"]["get"]["responses"]


def test_like_weight_sets_how_much_the_llm_reorders(client, db):
    """E2UREC_LIKE_WEIGHT scales log P(like) against log stage score: 0 serves the candidate
    stage's own order, 1000 an order by stage x P(like)^1000, in effect by P(like) alone."""
    with session_scope(db, write=False) as s:  # earlier tests forget some users
        user = s.scalars(
            select(User.external_id).where(User.quarantined_at.is_(None)).order_by(User.id)
        ).first()
    served, before = {}, client.app.state.settings
    try:
        for weight in (0.0, 1000.0):
            client.app.state.settings = before.model_copy(update={"like_weight": weight})
            r = client.get(
                "/recommend", params={"user_id": user, "k": 10}, headers=auth(RECOMMEND_KEY)
            )
            assert r.status_code == 200 and r.json()["personalized"], r.text
            items = r.json()["items"]
            sources = [i["source"] for i in items]  # popularity top-ups come after the rest
            assert sources == sorted(sources, key=lambda x: x == "popularity"), sources
            for source in set(sources):
                keys = [
                    math.log(i["stage_score"]) + weight * math.log(i["score"])
                    for i in items
                    if i["source"] == source
                ]
                assert all(a >= b - 1e-9 for a, b in zip(keys, keys[1:], strict=False)), keys
            served[weight] = [i["item_id"] for i in items]
    finally:
        client.app.state.settings = before
    assert served[0.0] != served[1000.0]  # the weight changed what the user sees


def test_admin_key_has_every_scope(client, db):
    user = _users(db)[4]
    r = client.get("/recommend", params={"user_id": user, "k": 2}, headers=auth(ADMIN_KEY))
    assert r.status_code == 200


def test_a_client_that_times_out_never_takes_the_engine_down(db, tmp_path):
    """A /recommend that outlives E2UREC_SCORE_TIMEOUT_SECONDS answers 503 and cancels its wait
    in the engine; the engine must live on: /health stays ok and the next requests succeed."""
    settings = make_settings(db, tmp_path / "data", score_timeout_seconds=1e-6)
    app = create_app(settings)
    with TestClient(app) as c:
        with session_scope(db, write=False) as s:
            users = list(
                s.scalars(
                    select(User.external_id)
                    .where(User.quarantined_at.is_(None))
                    .order_by(User.id.desc())
                    .limit(5)
                )
            )
        for user in users:  # every one of these gives up before its batch is scored
            r = c.get("/recommend", params={"user_id": user, "k": 3}, headers=auth(RECOMMEND_KEY))
            assert r.status_code == 503 and "overloaded" in r.json()["detail"]
        app.state.settings = settings.model_copy(update={"score_timeout_seconds": 30.0})
        for user in users:
            r = c.get("/recommend", params={"user_id": user, "k": 3}, headers=auth(RECOMMEND_KEY))
            assert r.status_code == 200, r.text
            assert r.json()["personalized"] is True
        assert c.get("/health").status_code == 200
        engine = app.state.serving.engine
        assert engine.running and engine.deaths == 0


def test_health_fails_while_the_inference_loop_is_dead(client, monkeypatch):
    engine = client.app.state.serving.engine
    # The model-sync thread also restarts a dead loop, every poll (0.2 s here): it could revive
    # the loop before this test looks. Keep the restarting to the routes, which is under test.
    models = client.app.state.serving.models
    supervise = models.supervise
    monkeypatch.setattr(
        models,
        "supervise",
        lambda: None if threading.current_thread().name == "model-poll" else supervise(),
    )
    engine._queue.put(None)  # not a request: the guarded loop logs it and goes on
    assert client.get("/health").status_code == 200
    assert engine.errors >= 1 or engine.running
    # Kill the loop the only way left (a BaseException), as a fatal bug would.
    engine._control(lambda: (_ for _ in ()).throw(SystemExit("simulated"))).exception(10)
    for _ in range(200):
        if engine.dead:
            break
        threading.Event().wait(0.05)
    assert engine.dead
    r = client.get("/health")
    assert r.status_code == 503 and "died" in r.json()["status"]
    assert client.get("/health").status_code == 200  # the probe restarted it
    r = client.get("/recommend", params={"user_id": "1", "k": 3}, headers=auth(RECOMMEND_KEY))
    assert r.status_code == 200 and r.json()["personalized"] is True


def test_an_operator_can_require_a_key_for_metrics(db, tmp_path):
    keys = {"scraper-key-0123456789abc": ["metrics"]} | {FORGET_KEY: ["forget"]}
    settings = make_settings(db, tmp_path / "data", metrics_require_key=True, api_keys=keys)
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=auth(FORGET_KEY)).status_code == 403
        r = c.get("/metrics", headers=auth("scraper-key-0123456789abc"))
        assert r.status_code == 200 and "e2urec_forget_requests_open" in r.text


def test_a_client_that_hangs_up_frees_the_engine_of_its_work(db, tmp_path):
    """A client disconnects while its request waits behind a busy engine: the server notices,
    cancels the queued work, and the engine drops it unscored instead of keeping others
    waiting for an answer nobody reads."""
    settings = make_settings(db, tmp_path / "data")
    app = create_app(settings)
    with LiveServer(app) as server:
        engine = app.state.serving.engine
        busy = threading.Event()
        stalled = engine._control(lambda: busy.wait(20))  # the engine is busy until released
        with pytest.raises(httpx.TimeoutException):
            httpx.get(
                f"{server.url}/recommend",
                params={"user_id": "1", "k": 3},
                headers=auth(RECOMMEND_KEY),
                timeout=0.5,
            )
        from tests.service_support import wait_for

        def metric(prefix: str) -> str:
            text = httpx.get(f"{server.url}/metrics").text
            return next((x for x in text.splitlines() if x.startswith(prefix)), "")

        # the server notices the hang-up (it polls every 50 ms) and answers nobody with 499
        wait_for(lambda: 'status="499"' in metric('e2urec_http_requests_total{method="GET",'
                                                  'route="/recommend",status="499"'), 10,
                 "the server to notice the hang-up")  # fmt: skip
        busy.set()
        stalled.result(10)
        wait_for(
            lambda: float(metric("e2urec_engine_dropped").split()[1]) >= 1,
            10,
            "the abandoned request to be dropped unscored",
        )
        r = httpx.get(
            f"{server.url}/recommend", params={"user_id": "1", "k": 3}, headers=auth(RECOMMEND_KEY)
        )
        assert r.status_code == 200 and r.json()["personalized"] is True
        assert httpx.get(f"{server.url}/health").status_code == 200
