"""`POST /tokens`, `GET /tokens`, `GET /tokens/{id}` and `DELETE /tokens/{id}`: API tokens managed
over the API, as `plooto-api tokens` does from the CLI. All take `tokens:write`: the list of who may
call the gateway is an administrator's, not a reader's.

No token mints one with more power than its own: the new token's scopes are a subset of the caller's
(`*` grants anything), it lies within the caller's company and connection limits (inherited when
left out), and it expires no later than the caller does. A limited caller sees and revokes only the
tokens within its limits; the others do not exist for it (404)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from plooto_api import mapping, schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError
from plooto_api.api.lists import list_body
from plooto_api.schemas.common import Schema
from plooto_api.services import audit
from plooto_api.services.tokens import (
    InvalidScope,
    Principal,
    create_token,
    parse_scopes,
    readable_tokens,
    within_limits,
)
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import ApiToken, Company, Connection
from plooto_api.store.pagination import MAX_LIMIT, PageRequest, fetch_page

router = APIRouter(tags=["tokens"])
_write = Depends(require_scope("tokens:write"))

MIN_LIFETIME_SECONDS = 60
MAX_LIFETIME_SECONDS = 10 * 366 * 86400  # ten years; longer is a mistake, leave it out to never expire


class TokenCreate(Schema):
    """`POST /tokens`. Limits left out are the caller's own (none for an unlimited caller)."""

    scopes: list[Annotated[str, Field(max_length=100)]] = Field(
        min_length=1, max_length=100, examples=[["bills:read", "payments:read"]],
        description="`<resource>:read|write`, or `*` for every scope; only scopes the caller's token carries.",
    )  # fmt: skip
    name: str | None = Field(default=None, max_length=200, examples=["reporting job"])
    companies: list[Annotated[str, Field(max_length=40)]] | None = Field(
        default=None, min_length=1, max_length=1000, description="Limit the token to these companies."
    )
    connection_id: str | None = Field(
        default=None, max_length=40, description="Limit the token to one connection."
    )
    expires_in_seconds: int | None = Field(
        default=None, ge=MIN_LIFETIME_SECONDS, le=MAX_LIFETIME_SECONDS,
        description="Lifetime from now; left out, the token expires when the caller's does (never, if it never does).",
    )  # fmt: skip


class ApiTokenWithSecret(schemas.ApiToken):
    """A new token with its secret: returned only by `POST /tokens`."""

    secret: str = Field(description="The bearer token (`papi_…`); shown this once, only its hash is kept.")


class TokenList(BaseModel):
    object: Literal["list"] = "list"
    data: list[schemas.ApiToken]
    has_more: bool
    next_cursor: str | None = None


def _limits_exceeded(what: str, param: str) -> ApiError:
    return ApiError(403, "exceeds_token_limits", f"this token cannot create a token {what}", param=param)


def _check_scopes(principal: Principal, requested: list[str]) -> list[str]:
    try:
        scopes = parse_scopes(requested)
    except InvalidScope as exc:
        raise ApiError(400, "invalid_request", f"scopes: {exc}", param="scopes") from None
    if "*" not in principal.scopes:
        missing = sorted(set(scopes) - principal.scopes)
        if missing:
            raise ApiError(403, "insufficient_scope",
                           f"this token cannot grant {missing[0]}: a token grants only scopes it carries",
                           param="scopes")  # fmt: skip
    return scopes


def _check_limits(
    session: Session, principal: Principal, body: TokenCreate
) -> tuple[list[str] | None, str | None]:
    """The new token's companies and connection: those asked for, else the caller's own."""
    access = principal.access
    companies = sorted(set(body.companies)) if body.companies is not None else None
    if companies is None and access.company_ids is not None:
        companies = sorted(access.company_ids)
    connection_id = body.connection_id
    if connection_id is None and access.connection_ids is not None:
        connection_id = min(access.connection_ids)
    # Limits before existence, so a limited caller learns nothing of other tenants' ids.
    if access.connection_ids is not None and connection_id not in access.connection_ids:
        raise _limits_exceeded("for another connection than its own", "connection_id")
    if not within_limits(access, companies, connection_id):
        raise _limits_exceeded("for companies outside its own", "companies")
    if connection_id is not None and session.get(Connection, connection_id) is None:
        raise ApiError(
            400, "invalid_request", f"connection_id: no connection {connection_id}", param="connection_id"
        )
    if companies is not None:
        rows = session.execute(select(Company.id, Company.connection_id).where(Company.id.in_(companies)))
        known = {company_id: owner for company_id, owner in rows}
        for company_id in companies:
            if company_id not in known or connection_id not in (None, known[company_id]):
                where = f" in connection {connection_id}" if connection_id else ""
                raise ApiError(
                    400, "invalid_request", f"companies: no company {company_id}{where}", param="companies"
                )
    return companies, connection_id


def _check_expiry(session: Session, principal: Principal, body: TokenCreate) -> datetime | None:
    caller = session.get(ApiToken, principal.token_id)
    limit = caller.expires_at if caller is not None else None
    if body.expires_in_seconds is None:
        return limit
    expires_at = utcnow() + timedelta(seconds=body.expires_in_seconds)
    if limit is not None and expires_at > limit:
        raise _limits_exceeded(f"that outlives it (it expires {limit.isoformat()})", "expires_in_seconds")
    return expires_at


def _visible(session: Session, principal: Principal, token_id: str, *, for_update: bool = False) -> ApiToken:
    """The token if the caller may see it, else 404 (whether it exists or not)."""
    stmt = readable_tokens(session, principal).where(ApiToken.id == token_id)
    row = session.scalars(stmt.with_for_update() if for_update else stmt).first()
    if row is None:
        raise ApiError(404, "not_found", f"no token {token_id[:64]}", param="id")
    return row


@router.post(
    "/tokens",
    response_model=ApiTokenWithSecret,
    status_code=201,
    summary="Create an API token (its secret is returned this once)",
    responses={403: {"description": "`insufficient_scope`: a scope the caller lacks; `exceeds_token_limits`: "
                                    "companies, connection or lifetime beyond the caller's own"}},
)  # fmt: skip
def create(request: Request, body: TokenCreate, principal: Principal = _write) -> Any:
    with transaction(request.app.state.sessions) as session:
        scopes = _check_scopes(principal, body.scopes)
        companies, connection_id = _check_limits(session, principal, body)
        expires_at = _check_expiry(session, principal, body)
        row, secret = create_token(session, scopes=scopes, name=body.name, company_ids=companies,
                                   connection_id=connection_id, expires_at=expires_at)  # fmt: skip
        session.flush()
        audit.append(session, actor=principal.token_id, action="token.created", object_type="api_token",
                     object_id=row.id, connection_id=connection_id,
                     request_id=getattr(request.state, "request_id", None),
                     detail={"name": row.name, "scopes": scopes, "companies": companies,
                             "connection_id": connection_id, "expires_at": expires_at})  # never the secret  # fmt: skip
        token = mapping.api_token_to_schema(row)
    return ApiTokenWithSecret(**token.model_dump(), secret=secret)


@router.get("/tokens", response_model=TokenList, summary="List API tokens (never their secrets)")
def list_tokens(
    request: Request,
    principal: Principal = _write,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Any:
    with request.app.state.sessions() as session:
        stmt = readable_tokens(session, principal)
        page = fetch_page(session, stmt, ApiToken.id, PageRequest(limit=limit, cursor=cursor))
    return list_body(page, mapping.api_token_to_schema)


@router.get("/tokens/{token_id}", response_model=schemas.ApiToken, summary="Get one API token")
def get_token(request: Request, token_id: str, principal: Principal = _write) -> Any:
    with request.app.state.sessions() as session:
        return mapping.api_token_to_schema(_visible(session, principal, token_id))


@router.delete(
    "/tokens/{token_id}",
    status_code=204,
    summary="Revoke an API token (a revoked one stays revoked: 204 again)",
)
def revoke(request: Request, token_id: str, principal: Principal = _write) -> Response:
    """Revoking is idempotent; only the first revocation is audited. A token may revoke itself."""
    with transaction(request.app.state.sessions) as session:
        row = _visible(session, principal, token_id, for_update=True)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.append(session, actor=principal.token_id, action="token.revoked", object_type="api_token",
                         object_id=row.id, connection_id=row.connection_id,
                         request_id=getattr(request.state, "request_id", None),
                         detail={"name": row.name, "kind": row.kind})  # fmt: skip
    return Response(status_code=204)
