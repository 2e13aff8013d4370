"""API shapes of webhook endpoints (with the one-time secret), deliveries and their attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from plooto_api.schemas import WebhookEndpoint
from plooto_api.schemas.common import Schema


class WebhookEndpointCreate(Schema):
    """`POST /webhook_endpoints`."""

    url: str = Field(max_length=2000, examples=["https://example.com/plooto-webhooks"])
    events: list[str] | None = Field(
        default=None, max_length=100, description="Event types (`bill.*` for a family); omitted: every event."
    )
    companies: list[str] | None = Field(default=None, max_length=1000, description="Omitted: every company.")
    enabled: bool = True
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointUpdate(Schema):
    """`PATCH /webhook_endpoints/{id}`: the fields given change (checked as on creation); the secret
    changes only by rotation. Enabling an endpoint ends its failure streak and sends what is pending."""

    url: str | None = Field(default=None, max_length=2000)
    events: list[str] | None = Field(
        default=None, max_length=100, description="Event types (`bill.*` for a family); null: every event."
    )
    companies: list[str] | None = Field(default=None, max_length=1000, description="Null: every company.")
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointWithSecret(WebhookEndpoint):
    """An endpoint with its signing secret: returned only on creation and rotation."""

    secret: str = Field(description="Standard Webhooks secret (`whsec_…`); shown this once.")


class WebhookDeliveryAttempt(Schema):
    """One HTTP attempt of a delivery."""

    attempted_at: datetime
    response_status: int | None = None
    error: str | None = None
    duration_ms: int | None = None


class WebhookDelivery(Schema):
    """One event's delivery to one endpoint, with every attempt so far."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    object_id: str | None = None
    status: Literal["pending", "succeeded", "failed"]
    attempt_count: int = Field(description="Attempts since the delivery was last (re)queued.")
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    created_at: datetime
    attempts: list[WebhookDeliveryAttempt]


__all__ = [
    "WebhookDelivery",
    "WebhookDeliveryAttempt",
    "WebhookEndpointCreate",
    "WebhookEndpointUpdate",
    "WebhookEndpointWithSecret",
]
