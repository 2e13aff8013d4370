"""Fan-out: one pending delivery per matching endpoint, staged in the same transaction as the event,
so no event can be committed without its deliveries (nor a delivery without its event)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plooto_api.services.objects import readable_object_types
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.models import ApiToken, WebhookEndpoint

# session.info key: the enabled endpoints, read once per transaction (a sync writes many events).
_CACHE_KEY = "plooto_api.webhook_targets"


@dataclass(frozen=True)
class Target:
    """What an enabled endpoint wants: event types (exact, or `prefix.*`) and companies; and, for an
    endpoint limited to companies, the connections whose events of no company (`connection.*`) it
    hears too (those of a connection-limited token's connection). It hears only events of the object
    types its maker's token may read (`object_types`; None: every type): an event carries its object
    whole, so an endpoint is no way round a token's scopes."""

    endpoint_id: str
    event_types: frozenset[str] | None
    type_prefixes: tuple[str, ...]
    company_ids: frozenset[str] | None
    connection_ids: frozenset[str] = frozenset()
    object_types: frozenset[str] | None = None

    def wants(
        self,
        event_type: str,
        company_id: str | None,
        connection_id: str | None = None,
        object_type: str | None = None,
    ) -> bool:
        """Whether this endpoint subscribes to an event of `event_type` about an object of
        `object_type`, in `company_id` (of `connection_id`)."""
        if self.object_types is not None and object_type not in self.object_types:
            return False
        if (
            self.event_types is not None
            and event_type not in self.event_types
            and not any(event_type.startswith(prefix) for prefix in self.type_prefixes)
        ):
            return False
        if self.company_ids is None:
            return True
        # An endpoint limited to companies gets only those companies' events (and its connection's).
        if company_id is None:
            return connection_id is not None and connection_id in self.connection_ids
        return company_id in self.company_ids


def event_type_matches(pattern: str, event_type: str) -> bool:
    """`bill.*` matches every bill event; `*` matches everything; otherwise an exact match."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def _target(
    endpoint_id: str,
    event_types: list[str] | None,
    company_ids: list[str] | None,
    connection_ids: frozenset[str] = frozenset(),
    owner_scopes: list[str] | None = None,
) -> Target:
    exact = None if event_types is None or "*" in event_types else frozenset(event_types)
    prefixes = tuple(t[:-1] for t in event_types or [] if t.endswith(".*"))
    companies = None if company_ids is None else frozenset(company_ids)
    # An endpoint of no token (made by the CLI, an operator's) hears every type.
    object_types = None if owner_scopes is None else readable_object_types(owner_scopes)
    return Target(endpoint_id, exact, prefixes, companies, connection_ids, object_types)


def owner_connections(owner_connection_id: str | None, owner_company_ids: list[str] | None) -> frozenset[str]:
    """The connection whose company-less events an endpoint hears besides its companies': its owner
    token's, when that token is limited to a connection (and not to companies)."""
    if owner_connection_id is None or owner_company_ids is not None:
        return frozenset()
    return frozenset({owner_connection_id})


def endpoint_target(session: Session, endpoint: WebhookEndpoint) -> Target:
    """What one endpoint wants (see `Target`)."""
    owner = session.get(ApiToken, endpoint.owner) if endpoint.owner else None
    connections = owner_connections(owner.connection_id, owner.company_ids) if owner else frozenset()
    scopes = owner.scopes if owner else None
    return _target(endpoint.id, endpoint.event_types, endpoint.company_ids, connections, scopes)


def targets(session: Session) -> list[Target]:
    """The enabled endpoints, read once per transaction of `session`."""
    transaction = session.get_transaction()
    cached = session.info.get(_CACHE_KEY)
    if cached is not None and transaction is not None and cached[0] is transaction:
        return list(cached[1])
    with session.no_autoflush:  # the caller's pending rows flush when the caller decides
        rows = session.execute(
            select(
                WebhookEndpoint.id,
                WebhookEndpoint.event_types,
                WebhookEndpoint.company_ids,
                ApiToken.connection_id,
                ApiToken.company_ids.label("owner_company_ids"),
                ApiToken.scopes.label("owner_scopes"),
            )
            .outerjoin(ApiToken, ApiToken.id == WebhookEndpoint.owner)
            .where(WebhookEndpoint.enabled.is_(True))
        ).all()
    found = [
        _target(
            r.id,
            r.event_types,
            r.company_ids,
            owner_connections(r.connection_id, r.owner_company_ids),
            r.owner_scopes,
        )
        for r in rows
    ]
    if transaction is not None:
        session.info[_CACHE_KEY] = (transaction, found)
    return found


def forget_targets(session: Session) -> None:
    """Drop the cached endpoints (after creating, changing or deleting one in this transaction)."""
    session.info.pop(_CACHE_KEY, None)


def delivery_rows(session: Session, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pending deliveries of events given as rows (a bulk insert of events): one per enabled
    endpoint that wants each, as rows for a bulk insert after the events'."""
    found = targets(session)
    if not found:
        return []
    now = utcnow()
    return [
        {"id": new_id("whd"), "endpoint_id": target.endpoint_id, "event_id": event["id"],
         "object_id": event["object_id"], "status": "pending", "attempt_count": 0,
         "next_attempt_at": event["created_at"], "created_at": now, "updated_at": now}
        for event in events
        for target in found
        if target.wants(event["type"], event["company_id"], event["connection_id"], event["object_type"])
    ]  # fmt: skip
