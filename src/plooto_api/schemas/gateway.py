"""The gateway's own objects: connections, operations, events, webhook endpoints, tokens, audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from plooto_api.schemas.common import Schema

ConnectionState = Literal[
    "healthy", "syncing", "requires_action", "locked", "upstream_unavailable", "upstream_changed"
]


class Connection(Schema):
    """One Plooto login and its health."""

    id: str
    object: Literal["connection"] = "connection"
    label: str | None = None
    username: str
    upstream_url: str
    login_mode: Literal["http", "browser"] = "http"
    state: ConnectionState
    state_reason: str | None = Field(default=None, description="mfa · password · terms, when requires_action")
    state_detail: dict[str, Any] | None = Field(
        default=None,
        description="What the state rests on: for upstream_changed, `differences` (the portal's fields "
        "that differ) and `feeds` (company/feed pulls they stopped); for upstream_unavailable, `error` "
        "and the failed `feeds`; `drift` while another state stands over uncleared differences.",
    )
    state_changed_at: datetime
    last_synced_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class Operation(Schema):
    """A write in flight."""

    id: str
    object: Literal["operation"] = "operation"
    connection_id: str
    company_id: str | None = None
    kind: str
    status: Literal["pending", "running", "succeeded", "failed", "requires_action"]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    reference: str
    upstream_id: str | None = None
    attempts: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Event(Schema):
    """Something that changed; `data` holds the object as it was after the change."""

    id: str
    object: Literal["event"] = "event"
    type: str = Field(examples=["bill.approval_updated"])
    connection_id: str | None = None
    company_id: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    data: dict[str, Any]
    created_at: datetime


class WebhookEndpoint(Schema):
    """A target for event deliveries. The secret is shown once, at creation."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    description: str | None = None
    events: list[str] | None = Field(default=None, description="None means every event type.")
    companies: list[str] | None = Field(default=None, description="None means every company.")
    enabled: bool
    disabled_reason: str | None = None
    created_at: datetime
    updated_at: datetime


class ApiToken(Schema):
    """An API token's public face: never the secret, only its prefix."""

    id: str
    object: Literal["api_token"] = "api_token"
    name: str | None = None
    kind: Literal["api", "session"] = "api"
    prefix: str
    scopes: list[str]
    companies: list[str] | None = None
    connection_id: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class AuditEntry(Schema):
    """One entry of the append-only audit log."""

    id: str
    object: Literal["audit_entry"] = "audit_entry"
    occurred_at: datetime
    actor: str
    action: str
    object_type: str | None = None
    object_id: str | None = None
    company_id: str | None = None
    connection_id: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    upstream_evidence: dict[str, Any] | None = None
    hash: str
    prev_hash: str | None = None
