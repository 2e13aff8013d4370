"""Column types that keep money exact and times in UTC on every database we support."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, DateTime, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class RawJSON(str):
    """JSON text serialized already (a sync's object document): a JSON column given one stores the
    text as it is instead of encoding it again. Only text the gateway serialized itself goes here."""

    __slots__ = ()


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp. Naive datetimes are refused rather than guessed at.

    SQLite has no time zone type, so values come back naive there; they were written as UTC,
    so they are re-labelled UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLite: this conversion and SQLAlchemy's DATETIME text format in one C-level step, not two
        # Python ones (a sync page binds thousands of timestamps). Same text as DATETIME writes. A
        # value in UTC already skips the conversion (1.8% of an initial sync's instructions).
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            offset = value.utcoffset()
            if offset is None:
                raise ValueError("naive datetime given to a UTC column; use an aware datetime")
            if not offset:  # UTC already (most values): the text without its "+00:00"
                return value.isoformat(" ", "microseconds")[:26]
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class DecimalText(TypeDecorator[Decimal]):
    """An exact decimal kept as its text form (FX rates to 9 places, fees): no float on any backend."""

    impl = String(48)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("float given to an exact decimal column; use Decimal")
        return str(Decimal(value))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)
