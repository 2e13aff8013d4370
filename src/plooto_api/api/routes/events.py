"""`GET /events`, `GET /events/{id}` and `POST /events/{id}/redeliver`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import and_, or_, select

from plooto_api import mapping, schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError
from plooto_api.api.lists import list_body, within
from plooto_api.services import webhooks as webhook_service
from plooto_api.services.events import readable_events
from plooto_api.services.objects import readable_object_types
from plooto_api.services.tokens import Principal
from plooto_api.store.database import transaction
from plooto_api.store.models import Event, WebhookEndpoint
from plooto_api.store.pagination import MAX_LIMIT, PageRequest, fetch_page
from plooto_api.webhooks import schemas as wh_schemas
from plooto_api.webhooks.event_types import unknown_event_filter

router = APIRouter(tags=["events"])
_read = Depends(require_scope("events:read"))
_write = Depends(require_scope("webhooks:write"))


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[schemas.Event]
    has_more: bool
    next_cursor: str | None = None


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[wh_schemas.WebhookDelivery]
    has_more: bool = False
    next_cursor: str | None = None


@router.get(
    "/events", response_model=EventList, summary="List events, oldest first",
    description="Events in the order they were committed. `next_cursor` is given on the last page too: "
    "polling with it returns the events that came after the last one seen (`has_more` says whether "
    "more are waiting now). Poll by cursor, not by `created_from`: two transactions' events may "
    "carry creation times out of their commit order.",
)  # fmt: skip
def list_events(
    request: Request,
    principal: Principal = _read,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    type: Annotated[
        list[str] | None,
        Query(
            max_length=100,
            description="Event type, a family such as `bill.*`, or `*` (repeatable). "
            "One that matches no type the gateway emits is a 400 `unknown_event_type`.",
        ),
    ] = None,
    company: Annotated[str | None, Query(max_length=40)] = None,
    object_id: Annotated[str | None, Query(max_length=40)] = None,
    created_from: Annotated[datetime | None, Query(description="Created at or after (ISO 8601).")] = None,
    created_to: Annotated[datetime | None, Query(description="Created at or before (ISO 8601).")] = None,
) -> Any:
    stmt = _visible_events(principal)
    for pattern in type or ():  # a misspelt type would otherwise match nothing, silently
        if unknown_event_filter(pattern):
            message = (f"type: {pattern[:80]!r} matches no event type the gateway emits (a type such as "
                       "bill.created, a family such as bill.*, or *)")  # fmt: skip
            raise ApiError(400, "unknown_event_type", message, param="type")
    if type and "*" not in type:
        clauses = [
            Event.type.startswith(t[:-1], autoescape=True) if t.endswith(".*") else Event.type == t
            for t in type
        ]
        stmt = stmt.where(or_(*clauses))
    if company:
        stmt = stmt.where(Event.company_id == company)
    if object_id:
        stmt = stmt.where(Event.object_id == object_id)
    stmt = within(stmt, Event.created_at, created_from, created_to, params=("created_from", "created_to"))
    with request.app.state.sessions() as session:
        page = fetch_page(session, stmt, Event.seq, PageRequest(limit=limit, cursor=cursor), resumable=True)
    return list_body(page, mapping.event_to_schema)


def _visible_events(principal: Principal) -> Any:
    """The events `principal` may read: within its connections and companies (readable_events), and
    of the object types its scopes read (readable_object_types). A limited token's own endpoints are of
    no company: it reads their events (`webhook_endpoint.disabled`) as it reads the endpoints."""
    stmt = readable_events(principal.access)
    limits = stmt.whereclause  # None for a token with no connection or company limit
    if limits is not None:
        owned = select(WebhookEndpoint.id).where(WebhookEndpoint.owner == principal.token_id)
        endpoint_events = and_(Event.object_type == "webhook_endpoint", Event.object_id.in_(owned))
        stmt = select(Event).where(or_(limits, endpoint_events))
    types = readable_object_types(principal.scopes)
    return stmt if types is None else stmt.where(Event.object_type.in_(types))


def _event(session: Any, principal: Principal, event_id: str, *, to_read: bool = True) -> Event:
    """The event, if `principal` may see it; `to_read`: its object too (not for a redelivery, which
    sends it to the endpoints subscribed to it, and shows the caller none of it)."""
    visible = _visible_events(principal) if to_read else readable_events(principal.access)
    row: Event | None = session.scalars(visible.where(Event.id == event_id)).first()
    if row is None:
        raise ApiError(404, "not_found", f"no event {event_id[:64]}", param="id")
    return row


@router.get("/events/{event_id}", response_model=schemas.Event, summary="Get one event")
def get_event(request: Request, event_id: str, principal: Principal = _read) -> Any:
    with request.app.state.sessions() as session:
        return mapping.event_to_schema(_event(session, principal, event_id))


@router.post(
    "/events/{event_id}/redeliver",
    response_model=DeliveryList,
    summary="Queue an event again to every subscribed endpoint (a test event to its own only)",
)
def redeliver_event(request: Request, event_id: str, principal: Principal = _write) -> Any:
    with transaction(request.app.state.sessions) as session:
        event = _event(session, principal, event_id, to_read=False)
        deliveries = webhook_service.redeliver_event(session, principal, event)
        data = [webhook_service.delivery_to_schema(session, d, event.type) for d in deliveries]
    return {"object": "list", "data": data, "has_more": False, "next_cursor": None}
