"""The audit log: an append-only, hash-chained record of every write and approval action.

Each entry's `hash` is SHA-256 over the previous entry's hash and the canonical JSON of the entry
itself, so changing, removing or reordering any entry breaks every hash after it. `verify_chain`
walks the log and reports where it breaks. Appends are serialized (SQLite's write transactions
already are; on PostgreSQL a transaction-scoped advisory lock), so the chain never forks.
Nothing secret goes in: callers pass ids, amounts and the portal's evidence, never credentials.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plooto_api.services.events import lock_appends
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.models import AuditEntry


def _iso(value: datetime) -> str:
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(entry: AuditEntry) -> str:
    """The entry's content as canonical JSON (sorted keys, no spaces): what its hash covers."""
    content = {
        "id": entry.id,
        "occurred_at": _iso(entry.occurred_at),
        "actor": entry.actor,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "company_id": entry.company_id,
        "connection_id": entry.connection_id,
        "request_id": entry.request_id,
        "detail": entry.detail,
        "upstream_evidence": entry.upstream_evidence,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str | None, entry: AuditEntry) -> str:
    """sha256(prev_hash + canonical JSON of the entry), hex."""
    return hashlib.sha256(((prev_hash or "") + canonical(entry)).encode()).hexdigest()


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str | None = None,
    object_id: str | None = None,
    company_id: str | None = None,
    connection_id: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
    upstream_evidence: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append an entry in the caller's (write) transaction; it commits with the change it records."""
    lock_appends(session)  # one chain: entries append one transaction at a time
    prev_hash = session.scalars(select(AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    entry = AuditEntry(
        id=new_id("aud"),
        occurred_at=utcnow(),
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        company_id=company_id,
        connection_id=connection_id,
        request_id=request_id,
        # Round-trip through JSON so the hash covers exactly what the database will return.
        detail=json.loads(json.dumps(detail or {}, default=str)),
        upstream_evidence=json.loads(json.dumps(upstream_evidence, default=str))
        if upstream_evidence
        else None,
        prev_hash=prev_hash,
    )
    entry.hash = entry_hash(prev_hash, entry)
    session.add(entry)
    session.flush()
    return entry


def verify_chain(session: Session, *, batch: int = 1000) -> list[str]:
    """Walk the whole log in order; every problem found (an empty list means the chain is intact)."""
    problems: list[str] = []
    prev_hash: str | None = None
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.seq > last_seq).order_by(AuditEntry.seq).limit(batch)
        ).all()
        if not rows:
            return problems
        for row in rows:
            if row.prev_hash != prev_hash:
                problems.append(f"entry {row.seq} ({row.id}): prev_hash does not match the entry before it")
            if row.hash != entry_hash(row.prev_hash, row):
                problems.append(f"entry {row.seq} ({row.id}): hash does not match its content")
            prev_hash = row.hash
            last_seq = row.seq
