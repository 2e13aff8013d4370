"""Bearer-token authentication and scope checks.

`require_scope(scope)` is the dependency most routes use; a route whose scope depends on the object
it reads authenticates with `current_principal` and calls `require` once it knows the object. The object lists, the hottest path, take
`bearer_token` (no database work, so no thread hop) and call `authorize` in the same worker thread
and database session as their query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from plooto_api.api.errors import ApiError
from plooto_api.services.tokens import Principal, authenticate, touch_token
from plooto_api.store.database import transaction

_bearer = HTTPBearer(auto_error=False, description="An API token (`papi_…`) or a session token.")


async def bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The presented token (not yet checked); 401 if there is none."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing_token", "send an API token as `Authorization: Bearer <token>`",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    return credentials.credentials


def authorize(request: Request, session: Session, token: str, scope: str | None = None) -> Principal:
    """The caller behind `token`, read in `session`: 401 if the token is unknown, revoked or expired,
    403 if it lacks `scope`."""
    principal = authenticate(session, token)
    if principal is None:
        raise ApiError(401, "invalid_token", "the token is unknown, revoked or expired",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if principal.last_used_stale:  # at most once a minute per token; written apart from the read
        with transaction(request.app.state.sessions) as writer:
            touch_token(writer, principal.token_id)
    request.state.principal = principal
    if scope is not None:
        require(principal, scope)
    return principal


def require(principal: Principal, scope: str) -> None:
    """403 unless the caller's token carries `scope`: for routes whose scope depends on what they read."""
    if not principal.allows(scope):
        raise ApiError(403, "insufficient_scope", f"this token lacks the {scope} scope")


def current_principal(request: Request, token: Annotated[str, Depends(bearer_token)]) -> Principal:
    """The caller, from `Authorization: Bearer <token>`; 401 if missing, unknown, revoked or expired."""
    with request.app.state.sessions() as session:
        return authorize(request, session, token)


def require_scope(scope: str) -> Callable[..., Principal]:
    """A dependency that admits callers whose token carries `scope` (403 otherwise)."""

    def check(request: Request, token: Annotated[str, Depends(bearer_token)]) -> Principal:
        with request.app.state.sessions() as session:
            return authorize(request, session, token, scope)

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check
