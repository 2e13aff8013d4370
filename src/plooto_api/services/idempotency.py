"""Idempotency keys (Stripe semantics, kept 7 days), per token owner.

The unique constraint (owner, key) decides who owns a key: the INSERT that wins claims it, every
other request with that key sees the winner's record — still in flight (409), finished with the
same request (its first response, replayed) or finished with a different request (422).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import IdempotencyRecord

KEY_MAX_LENGTH = 255
RETENTION = timedelta(days=7)
# A claim whose request died before it recorded an operation may be taken over after this.
ABANDONED_AFTER = timedelta(minutes=5)


class InvalidKey(ValueError):
    """The Idempotency-Key header is empty or longer than 255 characters."""


@dataclass(frozen=True)
class Claim:
    """The outcome of presenting a key."""

    outcome: Literal["claimed", "replay", "in_flight", "reused"]
    record_id: int | None = None
    response_status: int | None = None
    response_body: dict[str, Any] | None = None
    operation_id: str | None = None  # a replay's: the write the first request started


def request_hash(method: str, path: str, body: Any) -> str:
    """A fingerprint of the request: method, path and the body as canonical JSON."""
    text = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def claim(
    sessions: sessionmaker[Session], *, owner: str, key: str, method: str, path: str, fingerprint: str
) -> Claim:
    """Claim `key` for this request, or say what the earlier request with that key became."""
    if not key or len(key) > KEY_MAX_LENGTH:
        raise InvalidKey(f"Idempotency-Key must be 1 to {KEY_MAX_LENGTH} characters")
    now = utcnow()
    for _ in range(3):
        try:
            with transaction(sessions) as session:
                # A key past its retention is forgotten: the new request starts afresh.
                session.execute(
                    delete(IdempotencyRecord).where(
                        IdempotencyRecord.owner == owner,
                        IdempotencyRecord.key == key,
                        IdempotencyRecord.expires_at < now,
                    )
                )
                record = IdempotencyRecord(
                    owner=owner, key=key, request_method=method, request_path=path, request_hash=fingerprint,
                    status="in_flight", created_at=now, expires_at=now + RETENTION,
                    locked_until=now + ABANDONED_AFTER,
                )  # fmt: skip
                session.add(record)
                session.flush()
                return Claim("claimed", record.id)
        except IntegrityError:
            pass  # another request owns the key: read what it became
        with transaction(sessions) as session:
            existing = session.scalars(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.owner == owner, IdempotencyRecord.key == key
                )
            ).first()
            if existing is None:
                continue  # it expired and was removed in between: try to claim again
            if existing.request_hash != fingerprint:
                return Claim("reused", existing.id)
            if existing.status == "completed":
                return Claim("replay", existing.id, existing.response_status, existing.response_body,
                             existing.operation_id)  # fmt: skip
            locked_until = _aware(existing.locked_until)
            if existing.operation_id is None and locked_until is not None and locked_until < now:
                # Its request died before recording a write: nothing was sent, take the key over.
                existing.locked_until = now + ABANDONED_AFTER
                return Claim("claimed", existing.id)
            return Claim("in_flight", existing.id)
    return Claim("in_flight")


def attach_operation(session: Session, record_id: int, operation_id: str) -> None:
    """Link the key to the write it started (in the transaction that records the write's intent)."""
    record = session.get(IdempotencyRecord, record_id)
    if record is not None:
        record.operation_id = operation_id


def complete(sessions: sessionmaker[Session], record_id: int, status: int, body: dict[str, Any]) -> None:
    """Store the response to replay for this key."""
    with transaction(sessions) as session:
        record = session.get(IdempotencyRecord, record_id)
        if record is not None and record.status != "completed":
            record.status = "completed"
            record.response_status = status
            record.response_body = body
            record.locked_until = None


def release(sessions: sessionmaker[Session], record_id: int) -> None:
    """Forget a claim whose request failed before anything was sent (the caller may retry the key)."""
    with transaction(sessions) as session:
        record = session.get(IdempotencyRecord, record_id)
        if record is not None and record.status == "in_flight" and record.operation_id is None:
            session.delete(record)


def complete_for_operation(session: Session, operation_id: str, status: int, body: dict[str, Any]) -> None:
    """The write's final answer for its keys, in the caller's transaction: keys whose request died
    while the write was in flight (recovery), and keys that answered 202 (the write still running
    then), so that a repeat replays how the write ended, not "running" for 7 days."""
    for record in _records_of(session, operation_id):
        record.status = "completed"
        record.response_status = status
        record.response_body = body
        record.locked_until = None


def release_for_operation(session: Session, operation_id: str) -> None:
    """Forget the keys of a write refused before anything was sent to the portal (the login needs a
    person, or writes are blocked), in the caller's transaction: as `release`, a retry with the same
    key once the cause is gone is carried out."""
    for record in _records_of(session, operation_id):
        session.delete(record)


def _records_of(session: Session, operation_id: str) -> list[IdempotencyRecord]:
    """The keys of a write that do not hold its final answer yet."""
    return list(
        session.scalars(
            select(IdempotencyRecord).where(
                IdempotencyRecord.operation_id == operation_id,
                or_(IdempotencyRecord.status == "in_flight", IdempotencyRecord.response_status == 202),
            )
        )
    )


def purge_expired(session: Session) -> int:
    """Delete keys past their 7 days."""
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)
