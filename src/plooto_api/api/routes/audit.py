"""`GET /audit`: the append-only audit log, oldest first, for tokens with the `audit:read` scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Select, select

from plooto_api import mapping, schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.lists import list_body, within
from plooto_api.services.tokens import Principal
from plooto_api.store.models import AuditEntry
from plooto_api.store.pagination import MAX_LIMIT, PageRequest, fetch_page

router = APIRouter(tags=["audit"])
_read = Depends(require_scope("audit:read"))


class AuditEntryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[schemas.AuditEntry]
    has_more: bool
    next_cursor: str | None = None


def _readable(principal: Principal) -> Select[AuditEntry]:
    """A token limited to companies or a connection sees only the entries about them."""
    stmt = select(AuditEntry)
    access = principal.access
    if access.connection_ids is not None:
        stmt = stmt.where(AuditEntry.connection_id.in_(access.connection_ids))
    if access.company_ids is not None:
        stmt = stmt.where(AuditEntry.company_id.in_(access.company_ids))
    return stmt


@router.get("/audit", response_model=AuditEntryList, summary="List audit log entries, oldest first")
def list_audit_entries(
    request: Request,
    principal: Principal = _read,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="An action, or a family such as `create_payment.*`.")
    ] = None,
    actor: Annotated[str | None, Query(max_length=100, description="A token id, `system` or `cli`.")] = None,
    object_id: Annotated[str | None, Query(max_length=40)] = None,
    company: Annotated[str | None, Query(max_length=40)] = None,
    connection: Annotated[str | None, Query(max_length=40)] = None,
    occurred_from: Annotated[datetime | None, Query(description="At or after (ISO 8601).")] = None,
    occurred_to: Annotated[datetime | None, Query(description="At or before (ISO 8601).")] = None,
) -> Any:
    stmt = _readable(principal)
    if action:
        if action.endswith(".*"):
            stmt = stmt.where(AuditEntry.action.startswith(action[:-1], autoescape=True))
        else:
            stmt = stmt.where(AuditEntry.action == action)
    for column, match in ((AuditEntry.actor, actor), (AuditEntry.object_id, object_id),
                          (AuditEntry.company_id, company), (AuditEntry.connection_id, connection)):  # fmt: skip
        if match:
            stmt = stmt.where(column == match)
    stmt = within(
        stmt, AuditEntry.occurred_at, occurred_from, occurred_to, params=("occurred_from", "occurred_to")
    )
    with request.app.state.sessions() as session:
        page = fetch_page(session, stmt, AuditEntry.seq, PageRequest(limit=limit, cursor=cursor))
    return list_body(page, mapping.audit_entry_to_schema)
