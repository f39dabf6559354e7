"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.db.session import session_scope

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    summary="Liveness: the process answers and its inference loop is alive",
    responses={503: {"description": "The inference loop died and is not running again yet"}},
)
def health(request: Request) -> JSONResponse:
    serving = getattr(request.app.state, "serving", None)
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
def ready(request: Request) -> JSONResponse:
    serving = request.app.state.serving
    checks = serving.readiness()
    try:
        with session_scope(request.app.state.settings.db_url, write=False) as session:
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


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
