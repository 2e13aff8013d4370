"""Keyset pagination with opaque cursors: stable order by id, no offsets, no skipped or doubled rows."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

T = TypeVar("T")

DEFAULT_LIMIT = 25
MAX_LIMIT = 100


class InvalidCursor(ValueError):
    """The cursor was not produced by this gateway (or was altered)."""


def encode_cursor(after_id: str, of: str) -> str:
    """An opaque cursor that resumes the listing `of` (a table's name) after `after_id`."""
    raw = json.dumps({"v": 1, "of": of, "after": after_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, of: str) -> str:
    """The id a cursor of the listing `of` resumes after; InvalidCursor if it is not one of ours, or
    is another listing's (it would end this one early, or start it again). A cursor given before
    cursors named their listing (an events poller's) is taken as it was."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not valid") from exc
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("after"), str):
        raise InvalidCursor("cursor is not valid")
    if data.get("of", of) != of:
        raise InvalidCursor(f"cursor is not valid here: it continues another list ({str(data['of'])[:40]})")
    return str(data["after"])


@dataclass(frozen=True)
class PageRequest:
    """Which page to read."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and where the next one starts."""

    items: list[T]
    has_more: bool
    next_cursor: str | None


def fetch_page(
    session: Session, stmt: Select[Any], key: Any, page: PageRequest, *, columns: bool = False,
    resumable: bool = False,
) -> Page[Any]:  # fmt: skip
    """The page of `stmt`'s rows that follows the cursor, in order of `key` (a unique column: a
    time-ordered id or an auto-incrementing sequence). With `columns`, rows are column tuples
    (attribute access by name) rather than ORM objects. `resumable` (a log that only grows: events)
    gives a cursor on the last page too, after its last row (or the one given, when no row follows
    it), so a client polls from where it stopped."""
    listing = key.table.name
    if page.cursor:
        after: Any = decode_cursor(page.cursor, listing)
        if issubclass(key.type.python_type, int):
            # ASCII digits only ("²".isdigit() holds) and within a 64-bit column: an altered
            # cursor is a 400, not an overflow in the driver.
            if not (after.isascii() and after.isdigit() and len(after) <= 18):
                raise InvalidCursor("cursor is not valid")
            after = int(after)
        stmt = stmt.where(key > after)
    ordered = stmt.order_by(key).limit(page.limit + 1)
    rows: list[Any] = list(session.execute(ordered) if columns else session.scalars(ordered))
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    next_cursor = (
        encode_cursor(str(getattr(rows[-1], key.key)), listing) if has_more or (resumable and rows) else None
    )
    if resumable and not rows:
        next_cursor = page.cursor
    return Page(items=rows, has_more=has_more, next_cursor=next_cursor)
