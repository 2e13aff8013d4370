"""`GET /connections` and `GET /connections/{id}`: the Plooto logins and their health."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Select, select

from plooto_api import mapping, schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError
from plooto_api.services.tokens import Principal
from plooto_api.store.models import Company, Connection
from plooto_api.store.pagination import MAX_LIMIT, InvalidCursor, decode_cursor, encode_cursor

router = APIRouter(tags=["connections"])
_read = Depends(require_scope("connections:read"))


class ConnectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[schemas.Connection]
    has_more: bool
    next_cursor: str | None = None


def _readable(principal: Principal) -> Select[Connection]:
    """The connections a token may see: its own connection, or those holding its companies."""
    stmt = select(Connection)
    access = principal.access
    if access.connection_ids is not None:
        stmt = stmt.where(Connection.id.in_(access.connection_ids))
    if access.company_ids is not None:
        stmt = stmt.where(
            Connection.id.in_(select(Company.connection_id).where(Company.id.in_(access.company_ids)))
        )
    return stmt


@router.get("/connections", response_model=ConnectionList, summary="List connections")
def list_connections(
    request: Request,
    principal: Principal = _read,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    state: Annotated[str | None, Query(description="healthy, syncing, requires_action, …")] = None,
) -> Any:
    stmt = _readable(principal)
    if state:
        stmt = stmt.where(Connection.state == state)
    if cursor:
        try:
            stmt = stmt.where(Connection.id > decode_cursor(cursor))
        except InvalidCursor as exc:
            raise ApiError(400, "invalid_cursor", str(exc), param="cursor") from exc
    with request.app.state.sessions() as session:
        rows = list(session.scalars(stmt.order_by(Connection.id).limit(limit + 1)))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "object": "list",
        "data": [mapping.connection_to_schema(r) for r in rows],
        "has_more": has_more,
        "next_cursor": encode_cursor(rows[-1].id) if has_more else None,
    }


@router.get("/connections/{connection_id}", response_model=schemas.Connection, summary="Get one connection")
def get_connection(request: Request, connection_id: str, principal: Principal = _read) -> Any:
    with request.app.state.sessions() as session:
        row = session.scalars(_readable(principal).where(Connection.id == connection_id)).first()
    if row is None:
        raise ApiError(404, "not_found", f"no connection {connection_id[:64]}", param="id")
    return mapping.connection_to_schema(row)
