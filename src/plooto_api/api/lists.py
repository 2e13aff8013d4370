"""The list envelope every collection answers with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plooto_api.store.pagination import Page


def list_body(page: Page[Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """`{"object": "list", "data", "has_more", "next_cursor"}` for a page of store rows."""
    return {
        "object": "list",
        "data": [convert(row) for row in page.items],
        "has_more": page.has_more,
        "next_cursor": page.next_cursor,
    }
