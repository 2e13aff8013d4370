"""Declarative base, id generation and the columns every mirrored portal object shares."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from plooto_api.store.types import JSONType, UTCDateTime

# Explicit constraint names, so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An auto-incrementing 64-bit key; SQLite only auto-increments a column declared INTEGER.
AutoIncrementKey = BigInteger().with_variant(Integer(), "sqlite")

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_CROCKFORD_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]  # 10 bits at a time
# A random byte as one random character: its low 5 bits (256 is a multiple of 32, so each character
# is as likely as any other).
_RANDOM_CHARACTERS = bytes.maketrans(bytes(range(256)), bytes(ord(_CROCKFORD[b % 32]) for b in range(256)))


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A gateway id: type prefix, then 26 Crockford base32 characters that sort by creation time.

    48 bits of milliseconds followed by 80 random bits (the ULID layout), so ids created later sort
    later and list order by id is creation order. The 80 bits are 16 characters of 5 random bits each,
    from the operating system's CSPRNG (a sync makes two ids per object: encoding one 128-bit number
    shift by shift cost 3% of an initial sync's writing).
    """
    random = os.urandom(16).translate(_RANDOM_CHARACTERS).decode()
    return f"{prefix}_{_time_characters(int(time.time() * 1000))}{random}"


@lru_cache(maxsize=1)
def _time_characters(milliseconds: int) -> str:
    """The 10 characters of an id that hold its time (the ids of one millisecond share them)."""
    return "".join([_CROCKFORD_PAIRS[(milliseconds >> shift) & 1023] for shift in range(40, -1, -10)])


class Base(DeclarativeBase):
    """Base of every table in the store."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class TimestampMixin:
    """created_at / updated_at kept by the store."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MirroredMixin:
    """Columns shared by every object mirrored from the portal.

    `created_at` / `updated_at` are set by whoever writes the object (sync, writes), never by
    the database on its own: an upsert that changes nothing must not look like a change.

    `upstream_id` is the portal's own id; with `connection_id` it identifies the row, so a re-sync
    updates the same row and the gateway `id` stays stable. `deleted_at` is set only on a confirmed
    absence upstream, never on a failed read.
    """

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # No index of its own: every mirrored table's unique (connection_id, upstream_id) index leads with it.
    connection_id: Mapped[str] = mapped_column(String(40), ForeignKey("connections.id", ondelete="CASCADE"))
    upstream_id: Mapped[str] = mapped_column(String(128))  # portal ids, or derived ones (userId@companyId)
    upstream_status_raw: Mapped[str | None] = mapped_column(String(64))
    upstream_fetched_at: Mapped[datetime | None]
    # The portal's own last-modified time of what is stored (when it gives one): a record older than
    # it is stale (read before the stored copy, written after) and is not written.
    upstream_modified_at: Mapped[datetime | None]
    upstream_url: Mapped[str | None] = mapped_column(String(500))
    quickbooks_id: Mapped[str | None] = mapped_column(String(64))
    xero_id: Mapped[str | None] = mapped_column(String(64))
    netsuite_id: Mapped[str | None] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The normalized JSON as last written, beside the columns it was made from: reads serve it as
    # it is. Written only by mapping.row_values, with the columns, so the two cannot disagree.
    document: Mapped[str | None] = mapped_column(Text)


class CompanyOwnedMixin(MirroredMixin):
    """A mirrored object that belongs to one company (client book)."""

    company_id: Mapped[str] = mapped_column(String(40), ForeignKey("companies.id", ondelete="CASCADE"))


__all__ = [
    "AutoIncrementKey",
    "Base",
    "CompanyOwnedMixin",
    "MirroredMixin",
    "TimestampMixin",
    "date",
    "new_id",
    "utcnow",
]
