"""Value conversions for normalization: exact JSON, money, dates, timestamps, record building."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from plooto_api.upstream._models import UpstreamRecord, UpstreamRef

_DECODER = msgspec.json.Decoder(float_hook=Decimal)  # the float's own text becomes the Decimal


def loads(text: str | bytes) -> Any:
    """Parse JSON keeping every number with a fraction as a Decimal (money never becomes a float).

    Raises ValueError for anything that is not JSON, including NaN and Infinity."""
    # A byte-order mark is tolerated, as the standard library's json.loads does for bytes.
    text = text.removeprefix("\ufeff") if isinstance(text, str) else text.removeprefix(codecs.BOM_UTF8)
    return _DECODER.decode(text)


def money(amount: Any, currency: str) -> dict[str, Any]:
    """`{"amount": Decimal, "currency": "CAD"}` from a portal number."""
    if isinstance(amount, float):  # pragma: no cover - loads() never produces floats
        raise TypeError("money must not pass through float")
    return {"amount": Decimal(amount), "currency": currency}


def money_or_none(amount: Any, currency: str | None) -> dict[str, Any] | None:
    if amount is None or currency is None:
        return None
    return money(amount, currency)


def parse_date(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def parse_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def clock_offset(date_header: str | None) -> float | None:
    """Seconds the server's clock (an HTTP Date header) is ahead of ours; None without a valid one."""
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).timestamp() - time.time()
    except (TypeError, ValueError, IndexError):
        return None


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After (seconds, or a date) as seconds from now; None without a valid one."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def date_as_timestamp(value: str | None, zone: tzinfo) -> datetime | None:
    """A portal date where a timestamp is wanted: the start of that day where the portal keeps its
    books (`zone`), in UTC, so the timestamp falls on the portal's day, not on the evening before."""
    day = parse_date(value)
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC) if day else None


def ref(object_type: str, upstream_id: str | None) -> UpstreamRef | None:
    return UpstreamRef(object_type, upstream_id) if upstream_id else None


def snake(value: str | None) -> str | None:
    """`BankValidationPending` → `bank_validation_pending`."""
    if value is None:
        return None
    out: list[str] = []
    for index, char in enumerate(value):
        if char.isupper() and index and not value[index - 1].isupper():
            out.append("_")
        out.append(char.lower())
    return "".join(out)


@dataclass(frozen=True)
class Context:
    """What a normalizer needs besides the raw object: company, where the portal is, when we read."""

    company_id: str
    base_url: str
    fetched_at: datetime

    def url(self, path: str | None) -> str | None:
        return f"{self.base_url.rstrip('/')}{path}" if path else None

    def record(
        self,
        object_type: str,
        upstream_id: str,
        fields: dict[str, Any],
        *,
        status_raw: str | None = None,
        path: str | None = None,
        modified: str | None = None,
        created: str | None = None,
        accounting_refs: dict[str, str | None] | None = None,
    ) -> UpstreamRecord:
        version = parse_timestamp(modified)
        return UpstreamRecord(
            object_type=object_type,
            upstream_id=upstream_id,
            company_upstream_id=self.company_id,
            modified_at=version or self.fetched_at,
            version=version,
            created_at=parse_timestamp(created) or self.fetched_at,
            status_raw=status_raw,
            url=self.url(path),
            accounting_refs=accounting_refs or {"quickbooks": None, "xero": None, "netsuite": None},
            fields=fields,
        )
