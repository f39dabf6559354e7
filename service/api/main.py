"""The FastAPI application: routes per resource, one Serving per process, metrics on every
request. Run it with ``e2urec-service serve`` (or ``uvicorn service.api.main:app``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from service.api.routes import admin, forget, health, recommend
from service.core import log_privacy
from service.core.db.session import session_scope
from service.core.settings import Settings, get_settings
from service.domain import queue_stats
from service.serving.metrics import Metrics
from service.serving.process import Serving

log = logging.getLogger("service")


class _MetricsMiddleware:
    """Counts and times every request by its route template (not its raw path, which would
    give one series per user id)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, path, str(status["code"])).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)


def _open_requests(settings: Settings) -> Callable[[], dict[str, float]]:
    def read() -> dict[str, float]:
        with session_scope(settings.db_url, write=False) as session:
            return queue_stats.open_requests(session)

    return read


def _job_rows(settings: Settings) -> Callable[[], dict]:
    """The job metrics, aggregated by the database at scrape time (the worker writes them)."""

    def read() -> dict:
        with session_scope(settings.db_url, write=False) as session:
            return queue_stats.job_stats(session)

    return read


def _tick_sender(settings: Settings, every: float = 1.0) -> Callable[[str], None]:
    """Wake the worker after a forget request, at most once a second per process (the beat
    tick runs anyway; this only makes a due batch start sooner)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.domain.tasks_client import send_tick

    last = [0.0]
    pool = ThreadPoolExecutor(1, thread_name_prefix="tick")  # a slow broker never delays a reply

    def send(_request_id: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            pool.submit(send_tick, settings)

    return send


def create_app(
    settings: Settings | None = None,
    *,
    on_forget_accepted: Callable[[str], None] | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    metrics.watch_queue(_open_requests(settings))
    metrics.watch_jobs(_job_rows(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        serving = Serving(settings, metrics)
        app.state.serving = serving
        log_privacy.install(serving.hash_user)  # the access log shows hashes, not user ids
        serving.start()
        try:
            yield
        finally:
            serving.stop()

    app = FastAPI(
        title="e2urec",
        version="0.1.0",
        summary="An LLM recommender that forgets users on request (E2URec unlearning).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.on_forget_accepted = on_forget_accepted or _tick_sender(settings)
    app.include_router(health.router)
    app.include_router(forget.router)
    app.include_router(recommend.router)
    app.include_router(admin.router)

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        # PostgreSQL restarting or unreachable: nothing was written, the client may retry.
        log.warning("database unavailable on %s %s: %s", request.method, _path(request), exc)
        return JSONResponse(
            {"detail": "the database is unavailable; nothing was changed, retry shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its trace for operators; the client gets a message, never the trace.
        log.exception("unhandled error on %s %s", request.method, _path(request))
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); it has been logged"},
            status_code=500,
        )

    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


def _path(request: Request) -> str:
    """The request's path for a log line, user ids replaced by their hash."""
    serving = getattr(request.app.state, "serving", None)
    if serving is None:
        return "(path withheld: no salt loaded)"
    return log_privacy.redact(request.url.path, serving.hash_user)


def app() -> FastAPI:  # `uvicorn --factory service.api.main:app`
    return create_app()
