"""Events: appended in the same transaction as the change that causes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, delete, select, text
from sqlalchemy.orm import Session

from plooto_api.store.base import new_id, utcnow
from plooto_api.store.bulk import insert_rows
from plooto_api.store.models import Event, WebhookDelivery
from plooto_api.store.scope import AccessScope
from plooto_api.store.types import RawJSON
from plooto_api.webhooks.fanout import delivery_rows

# One PostgreSQL advisory lock for the appends of events and of audit entries (services/audit.py):
# held from a transaction's first append to its commit, so appends commit in the order of their
# `seq`. Without it, pages written at once by several transactions committed out of that order, and
# a reader of `/events?after=` (or `events tail`) past a later `seq` skipped the earlier ones that
# committed after it. One lock for both, so a transaction taking both cannot deadlock another.
APPEND_LOCK = 0x706C6F6F746F  # "plooto"


def lock_appends(session: Session) -> None:
    """Take the append lock in the session's transaction (PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK})


def record_event(
    session: Session,
    event_type: str,
    *,
    data: dict[str, Any],
    connection_id: str | None = None,
    company_id: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
) -> str:
    """Append one event, with its webhook deliveries, in the caller's transaction; it commits (or
    not) with the change itself, so no delivery can be lost in between. Returns the event's id."""
    batch = EventBatch(session)
    event_id = batch.add(event_type, data=data, connection_id=connection_id, company_id=company_id,
                         object_type=object_type, object_id=object_id)  # fmt: skip
    batch.flush()
    return event_id


@dataclass
class EventBatch:
    """Events of one transaction, inserted together with their deliveries when flushed: a sync
    page's many, or `record_event`'s one. Their `seq` follows the order they were added."""

    session: Session
    rows: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime = field(default_factory=utcnow)  # one time for the whole transaction's events

    def add(
        self,
        event_type: str,
        *,
        data: dict[str, Any] | RawJSON,
        connection_id: str | None = None,
        company_id: str | None = None,
        object_type: str | None = None,
        object_id: str | None = None,
    ) -> str:
        """Stage one event; `data` is the object as a dict, or as its JSON text when the caller
        has serialized it already (a sync's document). Returns the event's id."""
        event_id = new_id("evt")
        self.rows.append({
            "id": event_id, "type": event_type, "connection_id": connection_id, "company_id": company_id,
            "object_type": object_type, "object_id": object_id, "data": data, "created_at": self.created_at,
        })  # fmt: skip
        return event_id

    def drop(self, object_ids: set[str]) -> None:
        """Unstage the events of these objects (to stage their change's events again, as one)."""
        self.rows = [row for row in self.rows if row["object_id"] not in object_ids]

    def flush(self) -> int:
        """Insert the staged events and their deliveries; returns how many events."""
        count = len(self.rows)
        if self.rows:
            lock_appends(self.session)
            insert_rows(self.session, cast(Table, Event.__table__), self.rows)  # no ORM objects
            insert_rows(
                self.session, cast(Table, WebhookDelivery.__table__), delivery_rows(self.session, self.rows)
            )
            self.rows = []
        return count


def readable_events(access: AccessScope) -> Select[Event]:
    """The events a caller may see: its connections' and companies' (events of no company, such as
    a connection's, only without a company limit)."""
    stmt = select(Event)
    if access.connection_ids is not None:
        stmt = stmt.where(Event.connection_id.in_(access.connection_ids))
    if access.company_ids is not None:
        stmt = stmt.where(Event.company_id.in_(access.company_ids))
    return stmt


def purge_events(session: Session, older_than: datetime, batch: int = 1000) -> int:
    """Delete one batch of events created before `older_than` (their deliveries go with them)."""
    seqs = list(
        session.scalars(
            select(Event.seq).where(Event.created_at < older_than).order_by(Event.seq).limit(batch)
        )
    )
    if seqs:
        session.execute(delete(Event).where(Event.seq.in_(seqs)))
    return len(seqs)
