"""Shapes every normalized object shares: money, upstream provenance, accounting references."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class Schema(BaseModel):
    """Base of every API shape: unknown fields are refused, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, from_attributes=True)


class Money(Schema):
    """An exact amount in one currency; serialized as a decimal string, never a float."""

    amount: Decimal = Field(examples=["1234.50"])
    currency: str = Field(min_length=3, max_length=3, examples=["CAD"])

    @field_serializer("amount")
    def _amount_as_string(self, value: Decimal) -> str:
        return format(value, "f")


class UpstreamInfo(Schema):
    """Where the object came from in the portal, and when it was last read."""

    status_raw: str | None = Field(default=None, description="The portal's own status label.")
    fetched_at: datetime | None = None
    url: str | None = None


class AccountingRefs(Schema):
    """Ids of the same record in the accounting software, where the portal knows them."""

    quickbooks: str | None = None
    xero: str | None = None
    netsuite: str | None = None


class PortalObject(Schema):
    """Fields of every object mirrored from the portal."""

    id: str = Field(description="Gateway id with a type prefix, stable across syncs.")
    object: str = Field(description="The object's type, e.g. `bill`.")
    company_id: str
    upstream_id: str = Field(description="The portal's own id.")
    created_at: datetime
    updated_at: datetime
    upstream: UpstreamInfo = Field(default_factory=UpstreamInfo)
    accounting_refs: AccountingRefs = Field(default_factory=AccountingRefs)
    deleted_at: datetime | None = Field(
        default=None, description="Set when the portal confirmed the object no longer exists."
    )


JSONDict = dict[str, Any]
