"""API keys as bearer tokens, each with scopes (forget, recommend, admin)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core.settings import Scope, Settings

bearer = HTTPBearer(auto_error=False, description="An API key from E2UREC_API_KEYS")


@dataclass(frozen=True)
class Caller:
    name: str  # what the audit log records: a short fingerprint, never the key itself
    scopes: frozenset[Scope]


def authenticate(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers=challenge,
        )
    if not settings.api_keys:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "no API keys are configured on this server: set E2UREC_API_KEYS",
            headers=challenge,
        )
    given = credentials.credentials.encode()
    for key, scopes in settings.api_keys.items():
        if hmac.compare_digest(key.encode(), given):
            fingerprint = hashlib.sha256(given).hexdigest()[:12]
            return Caller(f"key:{fingerprint}", frozenset(scopes))
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=challenge)


def require(scope: Scope):
    """A dependency that lets only callers whose key carries ``scope`` through."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Caller:
        caller = authenticate(request.app.state.settings, credentials)
        if scope not in caller.scopes:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this API key lacks the '{scope}' scope",
            )
        return caller

    return check
