"""The list envelope every collection answers with, and the time-range filter lists share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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


def within(
    stmt: S,
    column: InstrumentedAttribute[datetime],
    low: datetime | None,
    high: datetime | None,
    *,
    params: tuple[str, str],
) -> S:
    """`stmt` limited to low <= column <= high (None leaves that side open). `params` names the two
    query parameters, for the 400 a bound without a time zone gets."""
    for name, value in zip(params, (low, high), strict=True):
        if value is not None and value.tzinfo is None:
            raise ApiError(400, "invalid_request", f"{name}: give a time zone (e.g. Z)", param=name)
    if low is not None:
        stmt = stmt.where(column >= low)
    if high is not None:
        stmt = stmt.where(column <= high)
    return stmt
