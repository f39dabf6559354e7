"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.api.auth import authenticate, bearer
from service.api.deps import MaybeServing, MetricsDep, ServingDep, SettingsDep
from service.core.db.session import session_scope
from service.core.settings import Scope

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    summary="Liveness: the process answers and its inference loop is alive",
    responses={503: {"description": "The inference loop died and is not running again yet"}},
)
def health(serving: MaybeServing) -> JSONResponse:
    engine = serving.engine if serving is not None else None
    if engine is not None and engine.dead:
        serving.models.supervise()  # restart it; this answer still reports what was found
        return JSONResponse(
            {"status": "the inference loop had died; restarting it"}, status_code=503
        )
    return JSONResponse({"status": "ok"})


@router.get(
    "/ready",
    summary="Readiness: database reachable, catalogue and model loaded",
    responses={503: {"description": "Not ready; the body says which part and why"}},
)
def ready(serving: ServingDep, settings: SettingsDep) -> JSONResponse:
    checks = serving.readiness()
    try:
        with session_scope(settings.db_url, write=False) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = None
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    engine = serving.engine
    body = {
        "ready": all(v is None for v in checks.values()),
        "checks": {k: v or "ok" for k, v in checks.items()},
        "model_version": engine.version.label if engine is not None else None,
    }
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (a key with the metrics scope when E2UREC_METRICS_REQUIRE_KEY)",
    response_class=Response,
    responses={401: {"description": "A key is required"}, 403: {"description": "Wrong scope"}},
)
def metrics(
    settings: SettingsDep,
    registry: MetricsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Response:
    if settings.metrics_require_key:
        caller = authenticate(settings, credentials)
        if not caller.scopes & {Scope.metrics, Scope.admin}:
            raise HTTPException(403, "this API key lacks the 'metrics' scope")
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
