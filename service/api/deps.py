"""FastAPI dependencies as ``Annotated`` aliases: what a route needs, named once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.auth import Caller, require
from service.core.db.session import session_factory
from service.core.settings import Scope, Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _write_session(request: Request) -> Iterator[Session]:
    with session_factory(request.app.state.settings.db_url, write=True)() as session:
        yield session


def _read_session(request: Request) -> Iterator[Session]:
    with session_factory(request.app.state.settings.db_url, write=False)() as session:
        yield session


def _serving(request: Request):
    return request.app.state.serving


SettingsDep = Annotated[Settings, Depends(_settings)]
WriteSession = Annotated[Session, Depends(_write_session)]
ReadSession = Annotated[Session, Depends(_read_session)]
ForgetCaller = Annotated[Caller, Depends(require(Scope.forget))]
RecommendCaller = Annotated[Caller, Depends(require(Scope.recommend))]
AdminCaller = Annotated[Caller, Depends(require(Scope.admin))]
