"""`/webhook_endpoints`: create, list, read, change, delete, rotate the secret, send a test, list
deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from plooto_api import mapping, schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError
from plooto_api.api.lists import list_body
from plooto_api.services import webhooks as service
from plooto_api.services.tokens import Principal
from plooto_api.store.database import transaction
from plooto_api.store.models import WebhookEndpoint
from plooto_api.store.pagination import (
    MAX_LIMIT,
    InvalidCursor,
    PageRequest,
    decode_cursor,
    encode_cursor,
    fetch_page,
)
from plooto_api.webhooks import schemas as wh_schemas
from plooto_api.webhooks.delivery import DeliveryWorker

router = APIRouter(tags=["webhooks"])
_read = Depends(require_scope("webhooks:read"))
_write = Depends(require_scope("webhooks:write"))


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[schemas.WebhookEndpoint]
    has_more: bool
    next_cursor: str | None = None


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[wh_schemas.WebhookDelivery]
    has_more: bool
    next_cursor: str | None = None


@contextmanager
def _as_api_errors() -> Iterator[None]:
    try:
        yield
    except service.WebhookError as exc:
        raise ApiError(exc.status, exc.code, exc.message, param=exc.param) from exc


DELIVERIES = "webhook_deliveries"  # what a cursor of an endpoint's deliveries continues


def _after(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return decode_cursor(cursor, DELIVERIES)
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc), param="cursor") from exc


@router.post(
    "/webhook_endpoints",
    response_model=wh_schemas.WebhookEndpointWithSecret,
    status_code=201,
    summary="Create a webhook endpoint (its secret is returned this once)",
    description="The endpoint hears the events it subscribes to, within the companies of the token "
    "that makes it, and only of the objects that token may read: an event carries its object whole "
    "(a token without `customers:read` gets no `customer.*` events).",
)
def create_endpoint(
    request: Request, body: wh_schemas.WebhookEndpointCreate, principal: Principal = _write
) -> Any:
    ctx = request.app.state.ctx
    with _as_api_errors(), transaction(ctx.sessions) as session:
        return service.create_endpoint(
            session, ctx.vault, principal, body, allow_private=ctx.settings.webhook_allow_private
        )


@router.get("/webhook_endpoints", response_model=EndpointList, summary="List webhook endpoints")
def list_endpoints(
    request: Request,
    principal: Principal = _read,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Any:
    stmt = service.readable_endpoints(principal)
    with request.app.state.sessions() as session:
        page = fetch_page(session, stmt, WebhookEndpoint.id, PageRequest(limit=limit, cursor=cursor))
    return list_body(page, mapping.webhook_endpoint_to_schema)


@router.get(
    "/webhook_endpoints/{endpoint_id}", response_model=schemas.WebhookEndpoint, summary="Get one endpoint"
)
def get_endpoint(request: Request, endpoint_id: str, principal: Principal = _read) -> Any:
    with _as_api_errors(), request.app.state.sessions() as session:
        return mapping.webhook_endpoint_to_schema(service.get_endpoint(session, principal, endpoint_id))


@router.patch(
    "/webhook_endpoints/{endpoint_id}",
    response_model=schemas.WebhookEndpoint,
    summary="Change an endpoint (url, events, companies, description, enabled); enabling it sends what is pending",
)
def update_endpoint(
    request: Request, endpoint_id: str, body: wh_schemas.WebhookEndpointUpdate, principal: Principal = _write
) -> Any:
    ctx = request.app.state.ctx
    with _as_api_errors(), transaction(ctx.sessions) as session:
        row = service.update_endpoint(
            session, principal, endpoint_id, body, allow_private=ctx.settings.webhook_allow_private
        )
        return mapping.webhook_endpoint_to_schema(row)


@router.delete("/webhook_endpoints/{endpoint_id}", status_code=204, summary="Delete an endpoint")
def delete_endpoint(request: Request, endpoint_id: str, principal: Principal = _write) -> Response:
    ctx = request.app.state.ctx
    with _as_api_errors(), transaction(ctx.sessions) as session:
        service.delete_endpoint(session, ctx.vault, principal, endpoint_id)
    return Response(status_code=204)


@router.post(
    "/webhook_endpoints/{endpoint_id}/rotate_secret",
    response_model=wh_schemas.WebhookEndpointWithSecret,
    summary="Rotate the signing secret (the new one is returned this once; the old one signs 24 h more)",
)
def rotate_secret(request: Request, endpoint_id: str, principal: Principal = _write) -> Any:
    ctx = request.app.state.ctx
    with _as_api_errors(), transaction(ctx.sessions) as session:
        return service.rotate_secret(session, ctx.vault, principal, endpoint_id)


@router.post(
    "/webhook_endpoints/{endpoint_id}/test",
    response_model=wh_schemas.WebhookDelivery,
    summary="Send a `webhook_endpoint.test` event to this endpoint now",
)
async def test_endpoint(request: Request, endpoint_id: str, principal: Principal = _write) -> Any:
    ctx = request.app.state.ctx
    with _as_api_errors(), transaction(ctx.sessions) as session:
        delivery_id = service.queue_test_event(session, principal, endpoint_id).id
    worker = DeliveryWorker(ctx.sessions, ctx.vault, allow_private=ctx.settings.webhook_allow_private)
    await worker.deliver_now(delivery_id)  # a failure stays queued, retried on the usual schedule
    with _as_api_errors(), ctx.sessions() as session:  # 404 if the endpoint was deleted meanwhile
        return service.delivery_schema_by_id(session, delivery_id)


@router.get(
    "/webhook_endpoints/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    summary="List an endpoint's deliveries, oldest first, with every attempt",
)
def list_deliveries(
    request: Request,
    endpoint_id: str,
    principal: Principal = _read,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
) -> Any:
    with _as_api_errors(), request.app.state.sessions() as session:
        service.get_endpoint(session, principal, endpoint_id)
        data, has_more = service.list_deliveries(
            session, endpoint_id, status=status, after_id=_after(cursor), limit=limit
        )
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_cursor": encode_cursor(data[-1].id, DELIVERIES) if has_more else None,
    }
