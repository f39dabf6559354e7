"""FastAPI dependencies as ``Annotated`` aliases: what a route needs, named once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.auth import Caller, require
from service.core.db.session import session_factory
from service.core.settings import Scope, Settings
from service.serving.metrics import Metrics
from service.serving.process import Serving


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _write_session(request: Request) -> Iterator[Session]:
    with session_factory(request.app.state.settings.db_url, write=True)() as session:
        yield session


def _read_session(request: Request) -> Iterator[Session]:
    with session_factory(request.app.state.settings.db_url, write=False)() as session:
        yield session


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _serving_if_started(request: Request) -> Serving | None:
    return getattr(request.app.state, "serving", None)


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _on_forget_accepted(request: Request) -> Callable[[str], None]:
    return request.app.state.on_forget_accepted


SettingsDep = Annotated[Settings, Depends(_settings)]
ServingDep = Annotated[Serving, Depends(_serving)]
MaybeServing = Annotated[Serving | None, Depends(_serving_if_started)]  # /health, any time
MetricsDep = Annotated[Metrics, Depends(_metrics)]
# Called with a new request's id once it is committed (tells the worker's tick to look now).
OnForgetAccepted = Annotated[Callable[[str], None], Depends(_on_forget_accepted)]
WriteSession = Annotated[Session, Depends(_write_session)]
ReadSession = Annotated[Session, Depends(_read_session)]
ForgetCaller = Annotated[Caller, Depends(require(Scope.forget))]
RecommendCaller = Annotated[Caller, Depends(require(Scope.recommend))]
AdminCaller = Annotated[Caller, Depends(require(Scope.admin))]
