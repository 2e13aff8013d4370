"""Connections: one Plooto login each. Credentials in the vault, a recorded state machine.

States: healthy · syncing · requires_action (mfa / password / terms) · locked ·
upstream_unavailable · upstream_changed. Every change is recorded (`ConnectionStateChange`) and
emits an event in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api import mapping
from plooto_api.log import get_logger
from plooto_api.services import audit
from plooto_api.services.events import record_event
from plooto_api.store.base import MirroredMixin, new_id, utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import Base, Company, Connection, ConnectionStateChange, Operation
from plooto_api.store.models.gateway import UNFINISHED_WRITES
from plooto_api.store.vault import Vault
from plooto_api.upstream import (
    AccountLocked,
    AuthenticationError,
    Credentials,
    InvalidCredentials,
    InvalidMfaCode,
    MfaRequired,
    TermsNotAccepted,
)

log = get_logger(__name__)

PROBLEM_STATES = frozenset({"requires_action", "locked", "upstream_unavailable", "upstream_changed"})
NEEDS_A_PERSON = frozenset({"requires_action", "locked", "upstream_changed"})  # not the portal's outage
# What an upstream_changed connection's detail keeps: differences found, and the feeds they stopped.
MAX_DIFFERENCES = 50
MAX_DRIFTED_FEEDS = 20


class ConnectionNotFound(LookupError):
    """No connection with that id."""


class WritesInFlight(Exception):
    """A connection with writes still being sent cannot be removed: their outcome would be lost."""

    def __init__(self, connection_id: str, count: int) -> None:
        super().__init__(
            f"{connection_id} has {count} write{'s' if count != 1 else ''} still being sent to the portal; "
            "remove it once they have finished"
        )
        self.count = count


class NotUpstreamChanged(Exception):
    """Clearing drift was asked of a connection that is not `upstream_changed`."""


def normalize_totp_secret(secret: str) -> str:
    """A TOTP secret as authenticator apps show it (base32, spaces allowed), checked and normalized.

    Raises ValueError with a message fit for the user when it is not usable.
    """
    cleaned = "".join(secret.split()).upper().rstrip("=")
    try:
        decoded = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("the TOTP secret is not base32 (letters A-Z and digits 2-7)") from None
    if len(decoded) * 8 < 112:
        raise ValueError("the TOTP secret is too short (at least 112 bits, 23 base32 characters)")
    return cleaned


def _checked_totp_secret(value: SecretStr) -> SecretStr:
    return SecretStr(normalize_totp_secret(value.get_secret_value()))


# A TOTP secret in a request body, checked and normalized as it is parsed (a 422 when unusable).
TotpSecretInput = Annotated[SecretStr, AfterValidator(_checked_totp_secret)]


def normalize_username(username: str) -> str:
    """The portal's own reading of a login name (an e-mail): without surrounding spaces, in lower
    case. One login has one connection, however its name was typed."""
    return username.strip().lower()


def create_connection(
    session: Session,
    vault: Vault,
    *,
    username: str,
    password: str,
    upstream_url: str,
    totp_secret: str | None = None,
    label: str | None = None,
    login_mode: str = "http",
) -> Connection:
    """Create a connection; its password and TOTP secret go into the vault, never the row."""
    if totp_secret is not None:
        totp_secret = normalize_totp_secret(totp_secret)
    connection = Connection(
        id=new_id("conn"),
        label=label,
        username=normalize_username(username),
        upstream_url=upstream_url.rstrip("/"),
        login_mode=login_mode,
        state="healthy",
    )
    session.add(connection)
    session.flush()
    vault.seal(session, connection.id, "credentials", {"password": password, "totp_secret": totp_secret})
    session.add(ConnectionStateChange(connection_id=connection.id, from_state=None, to_state="healthy"))
    return connection


def load_credentials(session: Session, vault: Vault, connection: Connection) -> Credentials:
    """The connection's login, opened from the vault."""
    secret = vault.open(session, connection.id, "credentials") or {}
    return Credentials(
        username=connection.username,
        password=str(secret.get("password", "")),
        totp_secret=secret.get("totp_secret"),
    )


def update_credentials(
    session: Session,
    vault: Vault,
    connection: Connection,
    *,
    password: str | None = None,
    totp_secret: str | None = None,
) -> None:
    """Replace the password and/or TOTP secret of a connection."""
    secret = vault.open(session, connection.id, "credentials") or {}
    if password is not None:
        secret["password"] = password
    if totp_secret is not None:
        secret["totp_secret"] = normalize_totp_secret(totp_secret)
    vault.seal(session, connection.id, "credentials", secret)


def _keeping_drift(
    connection: Connection, state: str, reason: str | None, detail: dict[str, Any] | None
) -> tuple[str, str | None, dict[str, Any] | None]:
    """`state` as change_state records it when the connection holds uncleared differences."""
    drift = uncleared_drift(connection)
    if drift is None:
        return state, reason, detail
    if state == "healthy":
        state, reason, detail = "upstream_changed", None, None
    if state != "upstream_changed":
        return state, reason, {**(detail or {}), "drift": drift}
    before = (connection.state_detail or {}) if connection.state == "upstream_changed" else {}
    detail = dict(detail or {})
    detail["differences"] = _union(drift, detail.get("differences") or [])[:MAX_DIFFERENCES]
    feeds = _union(before.get("feeds") or [], detail.get("feeds") or [])
    if feeds:
        detail["feeds"] = sorted(feeds)[:MAX_DRIFTED_FEEDS]
    return state, reason, detail


def _union(first: list[str], then: list[str]) -> list[str]:
    """The items of both lists, each once, in order of appearance."""
    return list(dict.fromkeys([*first, *then]))


def change_state(
    session: Session,
    connection: Connection,
    state: str,
    *,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    clearing: bool = False,
) -> bool:
    """Move a connection to `state`, recording the change and its event. False if nothing changed.

    Compared with the state as committed now, the row held until this transaction ends (PostgreSQL;
    SQLite's writers are one at a time): two processes ending one sync together record its change
    once, not once each.

    Portal differences an operator has not cleared outlast any other change (see uncleared_drift):
    a login problem found since carries them in its detail (`drift`); the connection found healthy
    again is `upstream_changed` still; differences found again are added to those recorded, and the
    same ones found again are no news. Only clear_drift passes `clearing`."""
    if session.get_bind().dialect.name == "postgresql":
        session.refresh(connection, ["state", "state_reason", "state_detail"], with_for_update=True)
    if not clearing:
        state, reason, detail = _keeping_drift(connection, state, reason, detail)
    if connection.state == state and connection.state_reason == reason and connection.state_detail == detail:
        return False
    if connection.state == state == "healthy":
        # Healthy stays healthy: a note (an operator's clearing) giving way to none is no news.
        connection.state_reason, connection.state_detail = reason, detail
        return False
    if waiting_for_terms(connection) and (state, reason) == ("requires_action", "terms"):
        # Still waiting for the person to accept the terms: only the next try's time moved. No news.
        connection.state_detail = detail
        return False
    previous = connection.state
    connection.state = state
    connection.state_reason = reason
    connection.state_detail = detail
    connection.state_changed_at = utcnow()
    session.add(
        ConnectionStateChange(
            connection_id=connection.id, from_state=previous, to_state=state, reason=reason, detail=detail
        )
    )
    if state == "healthy":
        event_type = "connection.repaired" if previous in PROBLEM_STATES else "connection.healthy"
    else:
        event_type = f"connection.{state}"
    # Operators tailing the gateway's log see a connection that needs a person at once. (Info, not a
    # warning: the CLI, which logs warnings only, says it in its own words.)
    log.info(
        "connection_state", connection=connection.id, username=connection.username, state=state,
        reason=reason, previous=previous, needs_a_person=state in NEEDS_A_PERSON,
        **({"until": detail["until"]} if detail and "until" in detail else {}),
    )  # fmt: skip
    session.flush()
    record_event(
        session,
        event_type,
        data=mapping.connection_to_schema(connection).model_dump(mode="json"),
        connection_id=connection.id,
        object_type="connection",
        object_id=connection.id,
    )
    return True


# How long a locked connection is left alone when the portal does not say until when.
DEFAULT_LOCK_BACKOFF = timedelta(minutes=15)

# How often a connection waiting for its user to accept the portal's new terms of service may try
# to sign in by itself (a sync): the password is good, so no lockout is at stake, but the portal is
# not to be asked again and again. A person asking (POST /authenticate, the CLI's sync) tries now.
TERMS_RETRY_MINUTES = 15
TERMS_RETRY = timedelta(minutes=TERMS_RETRY_MINUTES)
TERMS_MESSAGE = (
    "the portal has new terms of service: the user must sign in to the portal and accept them "
    "(the gateway never accepts them for the user)"
)


def waiting_for_terms(connection: Connection) -> bool:
    """Whether the connection waits for its user to accept the portal's new terms of service."""
    return connection.state == "requires_action" and connection.state_reason == "terms"


def login_blocked_reason(
    connection: Connection, portal_now: datetime | None = None, *, deliberate: bool = False
) -> str | None:
    """Why the gateway must not sign in for this connection by itself now, or None if it may: the
    portal refused its password or its TOTP code, sent a code a person must give, or locked it.
    Only a person's action (new credentials, the code) or the lock's end lifts this. A connection
    waiting for its user to accept new terms of service tries again every TERMS_RETRY_MINUTES by
    the portal's clock, or when a person asks (`deliberate`); writes wait for the state to clear
    (without `portal_now`, it is blocked).

    A lock's end is the portal's time (the sandbox's clock moves when told to): `portal_now` is the
    portal's time now, as its session knows it. Without it, a lock the portal gave an end to is not
    judged here (the session's login guard judges it)."""
    detail = connection.state_detail or {}
    if waiting_for_terms(connection):
        if deliberate:
            return None
        retry_at = detail.get("retry_at")
        waiting = "waiting for the user to accept the portal's new terms of service in the portal" + (
            f" (the gateway tries again at {retry_at})" if retry_at is not None else ""
        )
        if portal_now is None:
            return waiting
        if retry_at is not None:
            return waiting if portal_now < datetime.fromisoformat(retry_at) else None
        return waiting if utcnow() < connection.state_changed_at + TERMS_RETRY else None
    if connection.state == "requires_action" and connection.state_reason == "password":
        return "waiting for a new password (the last one was refused)"
    if connection.state == "requires_action" and connection.state_reason == "mfa":
        if detail.get("error") == "code_refused":
            return "waiting for a new TOTP secret (the portal refused the codes of the stored one)"
        return "waiting for the MFA code the portal sent"
    if connection.state == "locked":
        until = detail.get("until")
        if until is not None:
            if portal_now is not None and portal_now < datetime.fromisoformat(until):
                return f"the portal locked this login until {until}"
        elif utcnow() < connection.state_changed_at + DEFAULT_LOCK_BACKOFF:
            return "the portal locked this login; waiting before trying again"
        if detail.get("password_refused") and not deliberate:
            # The lock's end changes nothing about that password: only a person's new one is tried.
            return "waiting for a new password (the last one was refused, before the portal's lock)"
    return None


def password_refused(connection: Connection) -> bool:
    """Whether the portal refused the stored password and no new one was given since (a lock
    found after that does not make it right)."""
    if connection.state == "requires_action" and connection.state_reason == "password":
        return True
    return connection.state == "locked" and bool((connection.state_detail or {}).get("password_refused"))


def login_failure_state(exc: AuthenticationError) -> tuple[str, str | None, dict[str, Any] | None] | None:
    """The state (state, reason, detail) a refused sign-in puts its connection in, whoever tried it
    (a sync, a write, a read, a keep-alive); None for an error that says nothing of the login."""
    if isinstance(exc, MfaRequired):
        return "requires_action", "mfa", {"method": exc.challenge.method}
    if isinstance(exc, InvalidMfaCode):  # the stored TOTP secret produced a refused code
        return "requires_action", "mfa", {"method": "totp", "error": "code_refused"}
    if isinstance(exc, InvalidCredentials):
        return "requires_action", "password", None
    if isinstance(exc, AccountLocked):
        return "locked", None, {"until": exc.until.isoformat()} if exc.until else None
    if isinstance(exc, TermsNotAccepted):  # a person must accept them; tried again now and then
        retry_at = {"retry_at": (exc.at + TERMS_RETRY).isoformat()} if exc.at is not None else {}
        return "requires_action", "terms", {"message": TERMS_MESSAGE, **retry_at}
    return None


def record_login_failure(session: Session, connection: Connection, exc: AuthenticationError) -> bool:
    """Put `connection` in the state `exc` calls for (see login_failure_state), with its event, so
    nothing signs in again by itself; whether `exc` called for one. Uncleared drift waits in the
    detail (only an operator clears it)."""
    found = login_failure_state(exc)
    if found is None:
        return False
    state, reason, detail = found
    if state == "locked" and password_refused(connection):
        # A person's guesses (POST /authenticate) locked a login whose stored password the portal
        # had refused: once the lock ends, that password is still not to be tried.
        detail = {**(detail or {}), "password_refused": True}
    change_state(session, connection, state, reason=reason, detail=detail)
    return True


def record_login_failure_of(
    sessions: sessionmaker[Session], connection_id: str, exc: AuthenticationError
) -> None:
    """record_login_failure in a transaction of its own (a connection removed meanwhile is left be)."""
    if login_failure_state(exc) is None:
        return
    with transaction(sessions) as session:
        connection = session.get(Connection, connection_id)
        if connection is not None:
            record_login_failure(session, connection, exc)


def uncleared_drift(connection: Connection) -> list[str] | None:
    """The portal differences an operator has not cleared yet (writes stay blocked), or None.

    Drift is cleared by an operator only; a login problem found later (locked, a code needed) takes
    the connection's state, and carries the differences in its detail (`drift`) meanwhile."""
    detail = connection.state_detail or {}
    if connection.state == "upstream_changed":
        return list(detail.get("differences") or [])
    drift = detail.get("drift")
    return list(drift) if isinstance(drift, list) else None


def mark_upstream_changed(
    sessions: sessionmaker[Session], connection_id: str, differences: list[str]
) -> None:
    """The portal answered in a shape the adapter does not know (outside a sync: a write's read-back,
    a `?fresh=true` read): the connection is `upstream_changed` and stops writing until cleared."""
    with transaction(sessions) as session:
        connection = session.get(Connection, connection_id)
        if connection is not None:
            change_state(
                session, connection, "upstream_changed", detail={"differences": differences[:MAX_DIFFERENCES]}
            )


def clear_drift(
    session: Session, connection: Connection, *, actor: str, request_id: str | None = None
) -> None:
    """An operator reviewed the portal's change (and updated the adapter): allow writes again.

    The connection goes back to healthy (event `connection.repaired`) and the audit log keeps who
    cleared which differences. A feed that still differs marks the connection again at its next sync.
    """
    differences = uncleared_drift(connection)
    if differences is None:
        raise NotUpstreamChanged(f"{connection.id} is {connection.state}, not upstream_changed")
    if connection.state == "upstream_changed":
        change_state(session, connection, "healthy", detail={"cleared_by": actor}, clearing=True)
    else:  # a login problem came since: it stays, without the drift
        detail = {k: v for k, v in (connection.state_detail or {}).items() if k != "drift"}
        change_state(
            session,
            connection,
            connection.state,
            reason=connection.state_reason,
            detail=detail or None,
            clearing=True,
        )
    audit.append(session, actor=actor, action="connection.drift_cleared", object_type="connection",
                 object_id=connection.id, connection_id=connection.id, request_id=request_id,
                 detail={"differences": differences[:MAX_DIFFERENCES]})  # fmt: skip


@dataclass
class Removed:
    """What removing a connection took with it."""

    connection_id: str
    companies: int
    objects: int  # mirrored objects of every type, companies included


def count_synced(session: Session, connection_id: str) -> tuple[int, int]:
    """(companies, objects of every type, companies included) synced from a connection."""
    companies = objects = 0
    for mapper in Base.registry.mappers:
        model = mapper.class_
        if issubclass(model, MirroredMixin):
            count = session.scalar(
                select(func.count()).select_from(model).where(model.connection_id == connection_id)
            )
            objects += count or 0
            if model is Company:
                companies = count or 0
    return companies, objects


def check_no_writes_in_flight(session: Session, connection_id: str) -> None:
    """Raise WritesInFlight if any write of the connection is pending or running."""
    count = session.scalar(
        select(func.count())
        .select_from(Operation)
        .where(Operation.connection_id == connection_id, Operation.status.in_(UNFINISHED_WRITES))
    )
    if count:
        raise WritesInFlight(connection_id, count)


def remove_connection(
    session: Session, vault: Vault, connection: Connection, *, actor: str, request_id: str | None = None
) -> Removed:
    """Remove a connection and everything kept for it, in the caller's transaction: its credentials
    and portal session (vault), the companies and objects synced from it, its sync cursors,
    operations and session tokens (the database cascades from the connection row).

    Raises WritesInFlight while any of its writes is pending or running (a removal would lose
    whether the portal took it). History stays: its events and audit entries keep its id, the event
    `connection.removed` and the audit entry `connection.removed` say who removed it and what went
    with it. The portal login itself is untouched; connecting it again starts a new initial sync.
    """
    check_no_writes_in_flight(session, connection.id)
    companies, objects = count_synced(session, connection.id)
    removed = Removed(connection.id, companies, objects)
    record_event(
        session,
        "connection.removed",
        data=mapping.connection_to_schema(connection).model_dump(mode="json"),
        connection_id=connection.id,
        object_type="connection",
        object_id=connection.id,
    )
    audit.append(session, actor=actor, action="connection.removed", object_type="connection",
                 object_id=connection.id, connection_id=connection.id, request_id=request_id,
                 detail={"username": connection.username, "upstream_url": connection.upstream_url,
                         "companies": companies, "objects": objects})  # fmt: skip
    vault.delete(session, connection.id)
    session.delete(connection)
    session.flush()
    return removed


@dataclass
class VaultSessionStateStore:
    """Keeps a connection's portal session (cookies, device trust) sealed in the vault.

    Implements `plooto_api.upstream.SessionStateStore`; each save is its own small transaction, so
    a restart finds the newest session and needs no new MFA.
    """

    sessions: sessionmaker[Session]
    vault: Vault
    connection_id: str

    def load(self) -> dict[str, Any] | None:
        with self.sessions() as session:
            value = self.vault.open(session, self.connection_id, "session_state")
        return value if isinstance(value, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        with transaction(self.sessions) as session:
            # Locked, so a removal cannot slip in between: a removed connection keeps no session.
            if session.get(Connection, self.connection_id, with_for_update=True) is None:
                return
            self.vault.seal(session, self.connection_id, "session_state", state)


def get_connection(session: Session, connection_id: str) -> Connection:
    """A connection row, or ConnectionNotFound."""
    connection = session.get(Connection, connection_id)
    if connection is None:
        raise ConnectionNotFound(connection_id)
    return connection
