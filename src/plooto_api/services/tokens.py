"""API tokens: random, shown once, stored as SHA-256 hashes, scoped and optionally tenant-limited.

A token is `papi_` + 43 url-safe characters (256 bits). Only its hash is stored; its first
characters (`prefix`) identify it to people. Scopes are `<resource>:read|write` (or `*` for all);
a token may be limited to some companies and/or one connection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from plooto_api.store.base import new_id, utcnow
from plooto_api.store.models import ApiToken
from plooto_api.store.scope import AccessScope

TOKEN_PREFIX = "papi_"

READ_SCOPES = (
    "companies:read", "bank_accounts:read", "users:read", "approvals:read", "vendors:read",
    "customers:read", "bills:read", "payments:read", "invoices:read", "transactions:read",
    "fx_conversions:read", "documents:read", "sync_mappings:read", "connections:read", "events:read",
)  # fmt: skip
WRITE_SCOPES = (
    "bills:write", "payments:write", "invoices:write", "approvals:write", "connections:write",
    "webhooks:read", "webhooks:write", "tokens:write", "audit:read",
)  # fmt: skip
ALL_SCOPES = frozenset(READ_SCOPES + WRITE_SCOPES)


class InvalidScope(ValueError):
    """A scope that does not exist."""


def hash_token(secret: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> list[str]:
    """Validate scopes given as a comma-separated string or a list; `*` means every scope."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise InvalidScope("at least one scope is needed (or '*' for all)")
    if "*" in items:
        return ["*"]
    unknown = sorted(set(items) - ALL_SCOPES)
    if unknown:
        raise InvalidScope(f"unknown scope {unknown[0]!r}; known: {', '.join(sorted(ALL_SCOPES))}")
    return sorted(set(items))


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, scopes and the data it may see."""

    token_id: str
    scopes: frozenset[str]
    access: AccessScope
    last_used_stale: bool = False

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


def create_token(
    session: Session,
    *,
    scopes: list[str],
    name: str | None = None,
    company_ids: list[str] | None = None,
    connection_id: str | None = None,
    kind: str = "api",
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret, which is never stored or shown again."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id("tok"),
        name=name,
        kind=kind,
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_token(secret),
        scopes=parse_scopes(scopes),
        company_ids=sorted(company_ids) if company_ids else None,
        connection_id=connection_id,
        expires_at=expires_at,
    )
    session.add(row)
    return row, secret


_LOOKUP = select(
    ApiToken.id,
    ApiToken.token_hash,
    ApiToken.scopes,
    ApiToken.company_ids,
    ApiToken.connection_id,
    ApiToken.expires_at,
    ApiToken.revoked_at,
    ApiToken.last_used_at,
)


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal of a presented token, or None if it is unknown, revoked or expired."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest = hash_token(secret)
    # Columns, not an ORM object: this runs on every request.
    row = session.execute(_LOOKUP.where(ApiToken.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    access = AccessScope(
        connection_ids=frozenset({row.connection_id}) if row.connection_id else None,
        company_ids=frozenset(row.company_ids) if row.company_ids else None,
    )
    stale = row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60
    return Principal(token_id=row.id, scopes=frozenset(row.scopes), access=access, last_used_stale=stale)


def touch_token(session: Session, token_id: str) -> None:
    """Record that a token was used (callers do it at most once a minute per token)."""
    row = session.get(ApiToken, token_id)
    if row is not None:
        row.last_used_at = utcnow()


def within_limits(access: AccessScope, company_ids: list[str] | None, connection_id: str | None) -> bool:
    """Whether a token limited to `company_ids` / `connection_id` (None: no limit) sees no more than
    `access` does: the same connection, if `access` has one; a subset of its companies, if it has some."""
    if access.connection_ids is not None and connection_id not in access.connection_ids:
        return False
    if access.company_ids is not None:
        return company_ids is not None and bool(company_ids) and set(company_ids) <= access.company_ids
    return True


def readable_tokens(session: Session, principal: Principal) -> Select[ApiToken]:
    """The tokens a caller may list, read and revoke: every token for an unlimited caller, else those
    limited within the caller's own limits (itself included)."""
    stmt = select(ApiToken)
    access = principal.access
    if access.connection_ids is not None:
        stmt = stmt.where(ApiToken.connection_id.in_(access.connection_ids))
    if access.company_ids is not None:
        # Company lists are JSON, whose containment operators differ by database; tokens are few,
        # so the subset test runs here and the page query keeps to plain columns.
        candidates = session.execute(
            stmt.with_only_columns(ApiToken.id, ApiToken.company_ids, ApiToken.connection_id)
        )
        ids = [row.id for row in candidates if within_limits(access, row.company_ids, row.connection_id)]
        stmt = stmt.where(ApiToken.id.in_(ids))
    return stmt


def revoke_token(session: Session, token_id: str) -> bool:
    """Revoke a token; False if there is no such token."""
    row = session.get(ApiToken, token_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return True
