"""The list envelope every collection answers with, and the time-range filter lists share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute

from plooto_api.api.errors import ApiError
from plooto_api.store.pagination import Page

S = TypeVar("S", bound=Select[Any])


def list_body(page: Page[Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """`{"object": "list", "data", "has_more", "next_cursor"}` for a page of store rows."""
    return {
        "object": "list",
        "data": [convert(row) for row in page.items],
        "has_more": page.has_more,
        "next_cursor": page.next_cursor,
    }


def as_utc(value: datetime) -> datetime:
    """A time filter's value in UTC, as the store compares times. ValueError when it has no time
    zone, or no UTC time: the years 1 to 9999 in its own zone can fall outside them in UTC
    (`9999-12-31T23:59:59-01:00`), which Python's datetime cannot hold (it was a 500)."""
    if value.tzinfo is None:
        raise ValueError("give a time zone (e.g. Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value.isoformat()} has no UTC time (it is past the year 9999 or before the year 1 in UTC)"
        ) from None


def within(
    stmt: S,
    column: InstrumentedAttribute[datetime],
    low: datetime | None,
    high: datetime | None,
    *,
    params: tuple[str, str],
) -> S:
    """`stmt` limited to low <= column <= high (None leaves that side open). `params` names the two
    query parameters, for the 400 a bound without a time zone, or without a UTC time, gets."""
    bounds = []
    for name, value in zip(params, (low, high), strict=True):
        try:
            bounds.append(None if value is None else as_utc(value))
        except ValueError as exc:
            raise ApiError(400, "invalid_request", f"{name}: {exc}", param=name) from exc
    low, high = bounds
    if low is not None:
        stmt = stmt.where(column >= low)
    if high is not None:
        stmt = stmt.where(column <= high)
    return stmt
