"""Tables for the gateway's own records: connections, sync cursors, operations, idempotency,
events and webhook deliveries, API tokens, the audit log and the encrypted vault."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from plooto_api.store.base import AutoIncrementKey, Base, TimestampMixin, utcnow


class Connection(TimestampMixin, Base):
    """One Plooto login. Its credentials and session live in the vault, never here."""

    __tablename__ = "connections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    label: Mapped[str | None] = mapped_column(String(200))
    username: Mapped[str] = mapped_column(String(320))
    upstream_url: Mapped[str] = mapped_column(String(500))
    login_mode: Mapped[str] = mapped_column(String(16), default="http")  # http · browser
    # healthy · syncing · requires_action · locked · upstream_unavailable · upstream_changed
    state: Mapped[str] = mapped_column(String(32), default="healthy")
    state_reason: Mapped[str | None] = mapped_column(String(32))  # mfa · password · terms, …
    state_detail: Mapped[dict[str, Any] | None] = mapped_column()
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_synced_at: Mapped[datetime | None]
    # Set only by migration 0006, on a login an older `connect` had stored twice: the id of the
    # login's connection. Such rows work as before, outside the one-per-login index.
    duplicate_of: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        # One connection per login and portal (sign_in relies on it when two processes race).
        Index("uq_connections_login", "username", "upstream_url", unique=True,
              sqlite_where=text("duplicate_of IS NULL"), postgresql_where=text("duplicate_of IS NULL")),
    )  # fmt: skip


class ConnectionStateChange(Base):
    """A recorded transition of a connection's state."""

    __tablename__ = "connection_state_changes"

    id: Mapped[int] = mapped_column(AutoIncrementKey, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None] = mapped_column()
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


class SyncCursor(Base):
    """Where the last sync of one object type in one company stopped, so the next resumes there."""

    __tablename__ = "sync_cursors"
    __table_args__ = (UniqueConstraint("connection_id", "company_upstream_id", "object_type"),)

    id: Mapped[int] = mapped_column(AutoIncrementKey, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    company_upstream_id: Mapped[str] = mapped_column(String(128))
    object_type: Mapped[str] = mapped_column(String(32))
    watermark: Mapped[str | None] = mapped_column(String(200))  # the portal's modified-since value
    page_state: Mapped[dict[str, Any] | None] = mapped_column()  # mid-pull position, for resume
    full_sync_completed_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


# Operations whose outcome is not known yet: being sent, or to be read back after a crash.
UNFINISHED_WRITES = ("pending", "running")


class Operation(TimestampMixin, Base):
    """A write in flight: pending · running · succeeded · failed · requires_action."""

    __tablename__ = "operations"
    __table_args__ = (
        Index("ix_operations_status_created_at", "status", "created_at"),
        Index("ix_operations_reference", "reference"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    connection_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    company_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))  # create_payment · create_invoice · approve_bill …
    status: Mapped[str] = mapped_column(String(24), default="pending")
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[dict[str, Any] | None] = mapped_column()
    reference: Mapped[str] = mapped_column(String(100))  # written into the portal object to find it again
    upstream_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(40))  # api token id
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """The first response to an Idempotency-Key, replayed for repeats of the same request."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("owner", "key"),
        Index("ix_idempotency_records_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(AutoIncrementKey, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))  # whose key: the token owner
    key: Mapped[str] = mapped_column(String(255))
    request_method: Mapped[str] = mapped_column(String(8))
    request_path: Mapped[str] = mapped_column(String(500))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="in_flight")  # in_flight · completed
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column()
    operation_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]


class Event(Base):
    """Something that changed, with the object as it was after the change."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_type_seq", "type", "seq"),
        Index("ix_events_company_id_seq", "company_id", "seq"),
        Index("ix_events_object_id_seq", "object_id", "seq"),
        Index("ix_events_created_at", "created_at"),
    )

    seq: Mapped[int] = mapped_column(AutoIncrementKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    connection_id: Mapped[str | None] = mapped_column(String(40))
    company_id: Mapped[str | None] = mapped_column(String(40))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(TimestampMixin, Base):
    """Where events are delivered. The signing secret lives in the vault."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    event_types: Mapped[list[Any] | None] = mapped_column()  # None: every event
    company_ids: Mapped[list[Any] | None] = mapped_column()  # None: every company
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    failing_since: Mapped[datetime | None]
    owner: Mapped[str | None] = mapped_column(String(64))


class WebhookDelivery(TimestampMixin, Base):
    """One event's delivery to one endpoint, across its attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # In-order delivery per endpoint and object looks for an earlier delivery still pending.
        Index("ix_webhook_deliveries_endpoint_id_object_id_status", "endpoint_id", "object_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("events.id", ondelete="CASCADE"))
    object_id: Mapped[str | None] = mapped_column(String(40))  # for in-order delivery per object
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending · succeeded · failed
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]

    # Staged with its event in one flush: the relationship makes the event's INSERT come first.
    event: Mapped[Event] = relationship(lazy="raise")


class WebhookDeliveryAttempt(Base):
    """One HTTP attempt of a webhook delivery and what came back."""

    __tablename__ = "webhook_delivery_attempts"

    id: Mapped[int] = mapped_column(AutoIncrementKey, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    duration_ms: Mapped[int | None] = mapped_column(Integer)


class ApiToken(Base):
    """An API token. Only a hash of the secret is kept; the prefix identifies it to people."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="api")  # api · session
    prefix: Mapped[str] = mapped_column(String(24))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    company_ids: Mapped[list[Any] | None] = mapped_column()  # None: every company
    connection_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("connections.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class AuditEntry(Base):
    """An append-only record of a write or approval action, chained by hash to the one before."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_object_id", "object_id"),)

    seq: Mapped[int] = mapped_column(AutoIncrementKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))  # token id, "system", or a CLI user
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(40))
    company_id: Mapped[str | None] = mapped_column(String(40))
    connection_id: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    upstream_evidence: Mapped[dict[str, Any] | None] = mapped_column()
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class VaultEntry(TimestampMixin, Base):
    """A secret sealed with envelope encryption: a data key wrapped by the master key, then the data."""

    __tablename__ = "vault_entries"
    __table_args__ = (UniqueConstraint("owner_id", "purpose"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40))  # connection or webhook endpoint id
    purpose: Mapped[str] = mapped_column(String(32))  # password · totp_secret · session_state · …
    key_id: Mapped[str] = mapped_column(String(40))  # which master key wrapped the data key
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
