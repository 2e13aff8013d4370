"""Webhook endpoints and deliveries: create, read, change, delete, rotate secrets, test, redeliver,
replay.

Secrets are sealed in the vault (never stored in plain text) and returned only by `create_endpoint`
and `rotate_secret`. Token scoping: an unrestricted token manages every endpoint; a token limited
to companies or a connection sees only the endpoints it created, and those receive only its
companies' events (and, for a connection-limited token, its connection's `connection.*` events).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from plooto_api import mapping
from plooto_api.services.tokens import Principal
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.models import (
    Company,
    Event,
    WebhookDelivery,
    WebhookDeliveryAttempt,
    WebhookEndpoint,
)
from plooto_api.store.vault import Vault
from plooto_api.webhooks import schemas as wh_schemas
from plooto_api.webhooks.delivery import LEASE, SECRET_PURPOSE
from plooto_api.webhooks.event_types import TEST_EVENT_TYPE, unknown_event_filter
from plooto_api.webhooks.fanout import endpoint_target, event_type_matches, forget_targets
from plooto_api.webhooks.signing import generate_secret
from plooto_api.webhooks.targets import InvalidWebhookUrl, check_target_url

# A rotated-out secret still signs (beside the new one) this long, so receivers can switch over.
PREVIOUS_SECRET_GRACE = timedelta(hours=24)
_EVENT_PATTERN = re.compile(r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$")


class WebhookError(Exception):
    """A request about webhooks the caller can fix; `param` names the offending field."""

    def __init__(self, code: str, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status = status


def readable_endpoints(principal: Principal) -> Select[WebhookEndpoint]:
    """The endpoints a token may see and manage."""
    stmt = select(WebhookEndpoint)
    access = principal.access
    if access.company_ids is not None or access.connection_ids is not None:
        stmt = stmt.where(WebhookEndpoint.owner == principal.token_id)
    return stmt


def get_endpoint(session: Session, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
    """One readable endpoint; WebhookError 404 otherwise."""
    row = session.scalars(readable_endpoints(principal).where(WebhookEndpoint.id == endpoint_id)).first()
    if row is None:
        raise WebhookError("not_found", f"no webhook endpoint {endpoint_id[:64]}", "id", 404)
    return row


def _allowed_companies(session: Session, principal: Principal) -> set[str] | None:
    access = principal.access
    allowed: set[str] | None = None if access.company_ids is None else set(access.company_ids)
    if access.connection_ids is not None:
        in_connections = set(
            session.scalars(select(Company.id).where(Company.connection_id.in_(access.connection_ids)))
        )
        allowed = in_connections if allowed is None else allowed & in_connections
    return allowed


def _check_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    if not events:
        raise WebhookError(
            "invalid_request", "events must name at least one type (omit it for all)", "events"
        )
    for item in events:
        if not _EVENT_PATTERN.match(item) or unknown_event_filter(item):
            raise WebhookError(
                "invalid_request",
                f"events: {item[:80]!r} matches no event type (see the docs for the list)",
                "events",
            )
    return sorted(set(events))


def _check_url(url: str, allow_private: bool) -> str:
    try:
        return check_target_url(url, allow_private=allow_private)
    except InvalidWebhookUrl as exc:
        raise WebhookError("invalid_url", str(exc), "url") from exc


def _check_companies(session: Session, principal: Principal, requested: list[str] | None) -> list[str] | None:
    """The companies an endpoint hears: the requested ones (each known and allowed to the token),
    or, omitted, every company (a limited token: all of its own)."""
    allowed = _allowed_companies(session, principal)
    if requested is None:
        return None if allowed is None else sorted(allowed)  # a limited token's hears only its own
    if not requested:
        raise WebhookError(
            "invalid_request", "companies must name at least one company (omit it for all)", "companies"
        )
    companies = sorted(set(requested))
    known = set(session.scalars(select(Company.id).where(Company.id.in_(companies))))
    for company_id in companies:
        if company_id not in known or (allowed is not None and company_id not in allowed):
            raise WebhookError("invalid_request", f"companies: no company {company_id[:64]}", "companies")
    return companies


def _seal_secret(vault: Vault, session: Session, endpoint_id: str, secret: str, previous: str | None) -> None:
    until = (utcnow() + PREVIOUS_SECRET_GRACE).isoformat() if previous else None
    value = {"current": secret, "previous": previous, "previous_expires_at": until}
    vault.seal(session, endpoint_id, SECRET_PURPOSE, value)


def create_endpoint(
    session: Session,
    vault: Vault,
    principal: Principal,
    body: wh_schemas.WebhookEndpointCreate,
    *,
    allow_private: bool,
) -> wh_schemas.WebhookEndpointWithSecret:
    """Create an endpoint; the returned object carries its secret, shown this once."""
    url = _check_url(body.url, allow_private)
    events = _check_events(body.events)
    companies = _check_companies(session, principal, body.companies)
    row = WebhookEndpoint(
        id=new_id("we"),
        url=url,
        description=body.description,
        event_types=events,
        company_ids=companies,
        enabled=body.enabled,
        owner=principal.token_id,
    )
    session.add(row)
    secret = generate_secret()
    _seal_secret(vault, session, row.id, secret, None)
    session.flush()
    forget_targets(session)
    return wh_schemas.WebhookEndpointWithSecret(
        **mapping.webhook_endpoint_to_schema(row).model_dump(), secret=secret
    )


def update_endpoint(
    session: Session,
    principal: Principal,
    endpoint_id: str,
    body: wh_schemas.WebhookEndpointUpdate,
    *,
    allow_private: bool,
    now: datetime | None = None,
) -> WebhookEndpoint:
    """Change the fields given (checked as on creation). Enabling an endpoint ends its failure
    streak and sends its pending deliveries now."""
    row = get_endpoint(session, principal, endpoint_id)
    now = now or utcnow()
    given = body.model_fields_set
    if "url" in given:
        if body.url is None:
            raise WebhookError("invalid_url", "url must not be null", "url")
        row.url = _check_url(body.url, allow_private)
    if "events" in given:
        row.event_types = _check_events(body.events)
    if "companies" in given:
        row.company_ids = _check_companies(session, principal, body.companies)
    if "description" in given:
        row.description = body.description
    if "enabled" in given:
        if body.enabled is None:
            raise WebhookError("invalid_request", "enabled must be true or false", "enabled")
        if body.enabled and not row.enabled:
            row.disabled_reason = None
            row.failing_since = None
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == row.id, WebhookDelivery.status == "pending")
                .values(next_attempt_at=now, updated_at=now)
            )
        elif not body.enabled:
            row.disabled_reason = None
        row.enabled = body.enabled
    if session.is_modified(row):  # a PATCH that changes nothing leaves updated_at as it was
        row.updated_at = now
    session.flush()
    forget_targets(session)
    return row


def delete_endpoint(session: Session, vault: Vault, principal: Principal, endpoint_id: str) -> None:
    """Delete an endpoint, its deliveries and its secret."""
    row = get_endpoint(session, principal, endpoint_id)
    vault.delete(session, row.id)
    session.delete(row)
    session.flush()
    forget_targets(session)


def rotate_secret(
    session: Session, vault: Vault, principal: Principal, endpoint_id: str
) -> wh_schemas.WebhookEndpointWithSecret:
    """A new secret, returned this once; the old one still signs (beside it) for 24 hours."""
    row = get_endpoint(session, principal, endpoint_id)
    stored: dict[str, Any] | None = vault.open(session, row.id, SECRET_PURPOSE)
    secret = generate_secret()
    _seal_secret(vault, session, row.id, secret, stored["current"] if stored else None)
    row.updated_at = utcnow()
    return wh_schemas.WebhookEndpointWithSecret(
        **mapping.webhook_endpoint_to_schema(row).model_dump(), secret=secret
    )


def queue_test_event(session: Session, principal: Principal, endpoint_id: str) -> WebhookDelivery:
    """A `webhook_endpoint.test` event delivered to this endpoint alone."""
    row = get_endpoint(session, principal, endpoint_id)
    now = utcnow()
    event = Event(id=new_id("evt"), type=TEST_EVENT_TYPE, object_type="webhook_endpoint", object_id=None,
                  data=mapping.webhook_endpoint_to_schema(row).model_dump(mode="json"), created_at=now)  # fmt: skip
    session.add(event)
    delivery = WebhookDelivery(id=new_id("whd"), endpoint_id=row.id, event_id=event.id, object_id=None,
                               status="pending", attempt_count=0, next_attempt_at=now)  # fmt: skip
    delivery.event = event
    session.add(delivery)
    session.flush()
    return delivery


def requeue(
    session: Session, events: Iterable[Event], endpoints: list[WebhookEndpoint], now: datetime
) -> list[WebhookDelivery]:
    """Queue `events` again to each of `endpoints` that subscribes to them (the schedule restarts).
    A test event goes only to the endpoint it was sent to. A delivery that may be in flight keeps
    its lease: it goes out again once that attempt is over (see `DeliveryWorker`), not beside it."""
    targets = [(e, endpoint_target(session, e)) for e in endpoints if e.enabled]
    queued = []
    for event in events:
        for endpoint, target in targets:
            test = event.type == TEST_EVENT_TYPE
            if not test and not target.wants(
                event.type, event.company_id, event.connection_id, event.object_type
            ):
                continue
            delivery = session.scalars(
                select(WebhookDelivery).where(
                    WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.event_id == event.id
                )
            ).first()
            if delivery is None:
                if test:
                    continue  # a test event belongs to its own endpoint
                delivery = WebhookDelivery(id=new_id("whd"), endpoint_id=endpoint.id, event_id=event.id,
                                           object_id=event.object_id)  # fmt: skip
                session.add(delivery)
            leased = (
                delivery.status == "pending"
                and delivery.next_attempt_at is not None
                and now < delivery.next_attempt_at <= now + LEASE
            )
            delivery.status = "pending"
            delivery.attempt_count = 0
            if not leased:
                delivery.next_attempt_at = now
            delivery.updated_at = utcnow()  # marks it changed for an attempt in flight
            queued.append(delivery)
    session.flush()
    return queued


def redeliver_event(
    session: Session, principal: Principal, event: Event, now: datetime | None = None
) -> list[WebhookDelivery]:
    """Queue one event again to every (readable, enabled, subscribed) endpoint; a test event to its
    own endpoint only."""
    endpoints = list(session.scalars(readable_endpoints(principal)))
    return requeue(session, [event], endpoints, now or utcnow())


def replay(
    session: Session,
    *,
    since: datetime,
    event_type: str | None = None,
    endpoint_id: str | None = None,
    now: datetime | None = None,
) -> list[WebhookDelivery]:
    """Queue every event since `since` (optionally of a type or family, to one endpoint) again."""
    stmt = select(WebhookEndpoint)
    if endpoint_id is not None:
        stmt = stmt.where(WebhookEndpoint.id == endpoint_id)
    endpoints = list(session.scalars(stmt))
    if endpoint_id is not None and not endpoints:
        raise WebhookError("not_found", f"no webhook endpoint {endpoint_id}", "endpoint", 404)
    events = [
        e
        for e in session.scalars(select(Event).where(Event.created_at >= since).order_by(Event.seq))
        if e.type != TEST_EVENT_TYPE and (event_type is None or event_type_matches(event_type, e.type))
    ]
    return requeue(session, events, endpoints, now or utcnow())


def list_deliveries(
    session: Session,
    endpoint_id: str,
    *,
    status: str | None,
    after_id: str | None,
    limit: int,
) -> tuple[list[wh_schemas.WebhookDelivery], bool]:
    """One page of an endpoint's deliveries, oldest first, with their attempts."""
    stmt = (
        select(WebhookDelivery, Event.type)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    if status:
        stmt = stmt.where(WebhookDelivery.status == status)
    if after_id:
        stmt = stmt.where(WebhookDelivery.id > after_id)
    rows = session.execute(stmt.order_by(WebhookDelivery.id).limit(limit + 1)).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    return [delivery_to_schema(session, d, t) for d, t in rows], has_more


def delivery_to_schema(session: Session, row: WebhookDelivery, event_type: str) -> wh_schemas.WebhookDelivery:
    """A delivery with its attempts, oldest first."""
    attempts = session.scalars(
        select(WebhookDeliveryAttempt)
        .where(WebhookDeliveryAttempt.delivery_id == row.id)
        .order_by(WebhookDeliveryAttempt.id)
    )
    return wh_schemas.WebhookDelivery(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=event_type,
        object_id=row.object_id,
        status=row.status,
        attempt_count=row.attempt_count,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        created_at=row.created_at,
        attempts=[
            wh_schemas.WebhookDeliveryAttempt.model_validate(a, from_attributes=True) for a in attempts
        ],
    )


def delivery_schema_by_id(session: Session, delivery_id: str) -> wh_schemas.WebhookDelivery:
    """One delivery with its attempts; WebhookError 404 if it is gone (its endpoint deleted)."""
    found = session.execute(
        select(WebhookDelivery, Event.type)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id == delivery_id)
    ).first()
    if found is None:
        raise WebhookError(
            "not_found",
            f"no webhook delivery {delivery_id[:64]}: its endpoint or event was deleted",
            "id",
            404,
        )
    delivery, event_type = found
    return delivery_to_schema(session, delivery, event_type)
