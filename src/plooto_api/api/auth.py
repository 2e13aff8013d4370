"""Bearer-token authentication and scope checks, as FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from plooto_api.api.errors import ApiError
from plooto_api.services.tokens import Principal, authenticate, touch_token
from plooto_api.store.database import transaction

_bearer = HTTPBearer(auto_error=False, description="An API token (`papi_…`) or a session token.")


def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from `Authorization: Bearer <token>`; 401 if missing, unknown, revoked or expired."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing_token", "send an API token as `Authorization: Bearer <token>`",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    with request.app.state.sessions() as session:  # a read; the rare last-used update writes apart
        principal = authenticate(session, credentials.credentials)
    if principal is not None and principal.last_used_stale:
        with transaction(request.app.state.sessions) as session:
            touch_token(session, principal.token_id)
    if principal is None:
        raise ApiError(401, "invalid_token", "the token is unknown, revoked or expired",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    request.state.principal = principal
    return principal


def require_scope(scope: str) -> Callable[..., Principal]:
    """A dependency that admits callers whose token carries `scope` (403 otherwise)."""

    def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(scope):
            raise ApiError(403, "insufficient_scope", f"this token lacks the {scope} scope")
        return principal

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check
