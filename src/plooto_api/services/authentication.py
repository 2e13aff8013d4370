"""Logging a user's credentials into the portal: `sign_in` (for `plooto-api connect` and the API)
and `POST /authenticate`'s Authenticator, which hands back a session token.

The credentials are proven against the portal before anything is kept: a refused password leaves
no connection behind. When the portal wants a code the gateway cannot produce (SMS), the caller
gets a challenge id to complete with `complete_challenge`. Pending challenges live in this process
for the life of the portal's code (10 minutes), one per login: a new sign-in has the portal send a
new code, under a new challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plooto_api.jobs.context import JobContext
from plooto_api.services.connections import (
    ConnectionNotFound,
    change_state,
    create_connection,
    get_connection,
    normalize_username,
    record_login_failure_of,
    update_credentials,
)
from plooto_api.services.sessions import (
    NotWaitingForCode,
    TotpNotUsed,
    answer_mfa,
    complete_mfa,
    refuse_while_locked,
    wait_for_code,
    waits_for_code,
)
from plooto_api.services.tokens import READ_SCOPES, create_token
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import Connection, VaultEntry
from plooto_api.upstream import (
    AccountLocked,
    Credentials,
    InvalidCredentials,
    MfaChallenge,
    MfaRequired,
    TermsNotAccepted,
)

CHALLENGE_TTL_SECONDS = 600
SESSION_TOKEN_LIFETIME = timedelta(hours=12)


@dataclass
class Authenticated:
    """A logged-in connection and the session token that reads its data."""

    connection_id: str
    session_token: str


@dataclass
class Challenge:
    """The portal asked for an MFA code the caller must supply."""

    challenge_id: str
    connection_id: str
    methods: list[str]
    trust_device: bool
    expires_at: datetime = field(default_factory=lambda: utcnow() + timedelta(seconds=CHALLENGE_TTL_SECONDS))

    def sealed(self) -> dict[str, Any]:
        """What the vault keeps of it (under its connection): the id's digest, never the id."""
        return {"digest": _digest(self.challenge_id), "methods": self.methods, "trust_device": self.trust_device,
                "expires_at": self.expires_at.isoformat()}  # fmt: skip


# A pending challenge is kept in the vault under its connection (one at a time: a new sign-in of
# the login replaces it), so any process of the gateway answers it, and a restart forgets none.
CHALLENGE_PURPOSE = "mfa_challenge"


def _digest(challenge_id: str) -> str:
    return hashlib.sha256(challenge_id.encode()).hexdigest()


class UnknownChallenge(LookupError):
    """No pending challenge with that id (never issued, completed, expired, or replaced by a new
    sign-in of its login)."""


class ChallengeRestarted(Exception):
    """The portal's pending sign-in was gone when the code came (it expired, or a lock ended it): it
    was started again and the portal sent a new code, which answers the same challenge."""


@dataclass
class SignedIn:
    """A login proven against the portal (or waiting for the code the portal sent: `challenge`)."""

    connection_id: str
    created: bool  # a new connection, not the one this login already had
    challenge: MfaChallenge | None = None


async def sign_in(
    ctx: JobContext,
    *,
    username: str,
    password: str,
    upstream_url: str,
    totp_secret: str | None = None,
    mfa_code: str | None = None,
    trust_device: bool = True,
    label: str | None = None,
    login_mode: str | None = None,
) -> SignedIn:
    """Log a user's credentials into the portal as the connection for that login (one per username
    and portal: created, or the existing one given them).

    When the portal sends a code that `mfa_code` does not answer, the connection waits for it
    (requires_action, mfa) and `challenge` says how it was sent; a sign-in of this login that
    waited for a code already is started afresh without `mfa_code`, so the portal sends a new one.
    Raises the upstream errors (AuthenticationError subclasses, UpstreamUnavailable, ...) when the
    portal refuses or cannot be reached, and TotpNotUsed for a TOTP secret the portal asks no code
    of (it sent one by SMS); then a connection created here is removed and an existing
    one gets back the credentials and portal session it had (and is `locked` if the portal says
    so, or `requires_action` (terms) when the portal's new terms of service await the user:
    TermsNotAccepted; a person accepts them in the portal, never the gateway). While the portal's lock on the login lasts, nothing is sent (AccountLocked).
    """
    proven = await _prove_new_credentials(ctx, username, password, totp_secret, upstream_url, login_mode)
    connection_id, created, backup = _connection_for(ctx, username, upstream_url, password, totp_secret,
                                                     label=label, login_mode=login_mode, proven=proven)  # fmt: skip
    await ctx.portals.forget(connection_id)  # a fresh session with the credentials just given
    portal = await ctx.portals.get(connection_id)
    try:
        if proven is None:  # (a proof checked the lock before it signed in, and the portal let it in)
            await refuse_while_locked(ctx, connection_id)
        try:
            # A proof that stopped at the portal's MFA step goes on from there: a new sign-in would
            # have the portal send a second code.
            await portal.ensure_logged_in(deliberate=True, new_code=mfa_code is None and proven is None)
        except MfaRequired as exc:
            if totp_secret is not None:  # a TOTP secret answers the portal's TOTP step by itself
                raise TotpNotUsed(exc.challenge.method) from None
            if not mfa_code:
                wait_for_code(ctx, connection_id, exc.challenge.method)
                return SignedIn(connection_id, created, exc.challenge)
            await complete_mfa(ctx, connection_id, mfa_code, trust_device=trust_device)  # refused: as below
    except Exception as exc:
        if created:
            _discard(ctx, connection_id)
        elif backup is not None:
            # The stored password itself refused: the connection waits for a new one, and no sync
            # tries it again (that is how lockouts happen). Otherwise it is as it was.
            refused = isinstance(exc, InvalidCredentials) and "credentials" not in backup
            await _restore(
                ctx, connection_id, backup, state=("requires_action", "password", None) if refused else None
            )
            # The portal locks the login, whichever password; new terms wait for the person, who
            # accepts them in the portal (the gateway never does) and then asks again.
            if isinstance(exc, AccountLocked | TermsNotAccepted):
                record_login_failure_of(ctx.sessions, connection_id, exc)
        raise
    _proven(ctx, connection_id)
    return SignedIn(connection_id, created)


async def _prove_new_credentials(
    ctx: JobContext, username: str, password: str, totp_secret: str | None, upstream_url: str,
    login_mode: str | None,
) -> dict[str, Any] | None:  # fmt: skip
    """For a login that has a connection whose stored credentials differ from these: sign in with
    them on a session of their own first, so that a refused guess (POST /authenticate needs no
    token) leaves the working connection alone: its session, its stored credentials and its state,
    which another process could otherwise pick up meanwhile. Their portal state once the portal took
    the password (signed in, or at its MFA step); None when there is nothing to prove them against.
    Raises what the portal answered: a lock or new terms are the login's, and are recorded."""
    upstream_url = upstream_url.rstrip("/")
    with ctx.sessions() as session:
        existing = _existing_connection(session, username, upstream_url)
        if existing is None or _same_credentials(ctx, session, existing, password, totp_secret):
            return None
        connection_id, mode = existing.id, login_mode or existing.login_mode
    await refuse_while_locked(ctx, connection_id)  # nothing is sent while the portal's lock lasts
    credentials = Credentials(
        username=normalize_username(username), password=password, totp_secret=totp_secret
    )
    async with ctx.portals.probe(upstream_url, credentials, login_mode=mode) as (probe, store):
        try:
            await probe.ensure_logged_in(deliberate=True)
        except MfaRequired:
            pass  # the portal asks for a code only once it took the password
        except (AccountLocked, TermsNotAccepted) as exc:
            # The portal locks the login, whichever password; new terms wait for the person.
            record_login_failure_of(ctx.sessions, connection_id, exc)
            raise
        return dict(store.state or {})


def _proven(ctx: JobContext, connection_id: str) -> None:
    """The portal took the credentials just given: a connection that waited for a person (a new
    password, a code, a lock's end) is healthy again."""
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        if connection.state in {"requires_action", "locked"}:
            change_state(session, connection, "healthy", detail={"credentials_replaced": True})


def _connection_for(
    ctx: JobContext, username: str, upstream_url: str, password: str, totp_secret: str | None, *,
    label: str | None, login_mode: str | None, proven: dict[str, Any] | None = None,
) -> tuple[str, bool, dict[str, Any] | None]:  # fmt: skip
    """The connection for this login: (id, created, what to put back if the portal refuses; None for
    a connection created here, which a refusal removes).

    Credentials that differ from the stored ones are unproven: the saved portal session must not
    vouch for them (that would hand a session token to anyone who knows the username), so it is
    set aside and the login is done afresh with them; a refusal restores the old ones. With
    `proven` (the portal state of a sign-in that proved them, see _prove_new_credentials), that
    state takes its place.
    """
    upstream_url = upstream_url.rstrip("/")

    def look_or_create() -> tuple[str, bool, dict[str, Any] | None]:
        with transaction(ctx.sessions) as session:
            return _login_connection(session, ctx, username, upstream_url, password, totp_secret,
                                     label=label, login_mode=login_mode, proven=proven)  # fmt: skip

    try:
        return look_or_create()
    except IntegrityError:
        # Another process created this login's connection between our look and our insert (a
        # unique index holds one per login): the second look finds it and uses it.
        return look_or_create()


def _existing_connection(session: Session, username: str, upstream_url: str) -> Connection | None:
    return session.scalars(
        select(Connection).where(
            # Lower-cased on both sides: rows made before names were normalized keep their spelling.
            func.lower(Connection.username) == normalize_username(username),
            Connection.upstream_url == upstream_url,
            Connection.duplicate_of.is_(None),
        )
    ).first()


def _same_credentials(
    ctx: JobContext, session: Session, connection: Connection, password: str, totp_secret: str | None
) -> bool:
    stored = ctx.vault.open(session, connection.id, "credentials") or {}
    return hmac.compare_digest(str(stored.get("password", "")).encode(), password.encode()) and (
        totp_secret is None
        or hmac.compare_digest(str(stored.get("totp_secret") or "").encode(), totp_secret.encode())
    )


def _login_connection(
    session: Session, ctx: JobContext, username: str, upstream_url: str, password: str, totp_secret: str | None, *,
    label: str | None, login_mode: str | None, proven: dict[str, Any] | None,
) -> tuple[str, bool, dict[str, Any] | None]:  # fmt: skip
    existing = _existing_connection(session, username, upstream_url)
    if existing is None:
        row = create_connection(session, ctx.vault, username=username, password=password,
                                upstream_url=upstream_url, totp_secret=totp_secret, label=label,
                                login_mode=login_mode or "http")  # fmt: skip
        return row.id, True, None
    backup: dict[str, Any] = {"label": existing.label, "login_mode": existing.login_mode,
                              "state": (existing.state, existing.state_reason, existing.state_detail)}  # fmt: skip
    if label is not None:
        existing.label = label
    if login_mode is not None:  # before the login: it decides how the login is done
        existing.login_mode = login_mode
    if _same_credentials(ctx, session, existing, password, totp_secret):
        return existing.id, False, backup
    backup.update(credentials=ctx.vault.open(session, existing.id, "credentials") or {},
                  session_state=ctx.vault.open(session, existing.id, "session_state"))  # fmt: skip
    update_credentials(session, ctx.vault, existing, password=password, totp_secret=totp_secret)
    if proven:
        ctx.vault.seal(session, existing.id, "session_state", proven)
    else:
        ctx.vault.delete(session, existing.id, "session_state")
    return existing.id, False, backup


async def _restore(ctx: JobContext, connection_id: str, backup: dict[str, Any],
                   state: tuple[str, str | None, dict[str, Any] | None] | None = None) -> None:  # fmt: skip
    """Put back the label, login mode, credentials and portal session that unproven ones displaced,
    and the state (or `state`)."""
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        connection.label, connection.login_mode = backup["label"], backup["login_mode"]
        to_state, reason, detail = state or backup["state"]
        change_state(session, connection, to_state, reason=reason, detail=detail)
        if "credentials" in backup:
            ctx.vault.seal(session, connection_id, "credentials", backup["credentials"])
        if backup.get("session_state") is not None:
            ctx.vault.seal(session, connection_id, "session_state", backup["session_state"])
    await ctx.portals.forget(connection_id)


def _discard(ctx: JobContext, connection_id: str) -> None:
    with transaction(ctx.sessions) as session:
        connection = session.get(Connection, connection_id)
        if connection is not None:
            ctx.vault.delete(session, connection_id)
            session.delete(connection)


class Authenticator:
    """Runs portal logins on behalf of API callers."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    async def authenticate(
        self,
        *,
        username: str,
        password: str,
        upstream_url: str,
        totp_secret: str | None = None,
        mfa_code: str | None = None,
        trust_device: bool = True,
    ) -> Authenticated | Challenge:
        """Log in (see `sign_in`); a session token, or a challenge for the code the portal sent."""
        signed_in = await sign_in(self.ctx, username=username, password=password, upstream_url=upstream_url,
                                  totp_secret=totp_secret, mfa_code=mfa_code, trust_device=trust_device)  # fmt: skip
        challenge = None
        if signed_in.challenge is not None:
            challenge = Challenge("mfa_" + secrets.token_urlsafe(18), signed_in.connection_id,
                                  [signed_in.challenge.method], trust_device)  # fmt: skip
        with transaction(self.ctx.sessions) as session:
            self._prune(session)
            # This sign-in replaced any earlier one of the login (and the portal's new code the old one).
            self.ctx.vault.delete(session, signed_in.connection_id, CHALLENGE_PURPOSE)
            if challenge is not None:
                self.ctx.vault.seal(session, challenge.connection_id, CHALLENGE_PURPOSE, challenge.sealed())
        return challenge or self._issue(signed_in.connection_id)

    async def complete_challenge(self, challenge_id: str, code: str) -> Authenticated:
        """Answer a pending challenge (see `answer_mfa`). Raises UnknownChallenge; ChallengeRestarted
        when the portal's pending sign-in was gone (a new code is on its way, for this challenge);
        the upstream errors: InvalidMfaCode (the challenge stays), AccountLocked (the connection is
        locked; the challenge stays, and is answered once the lock ends), InvalidCredentials (the
        challenge is dropped: the connection waits for a new password)."""
        challenge = self._find(challenge_id)
        if challenge is None:
            raise UnknownChallenge(challenge_id)
        if not self._still_waiting(challenge.connection_id):
            # Signed in another way meanwhile (its code given to the connection, say): the portal
            # would check no code now, so the challenge must not vouch for one.
            self._drop(challenge)
            raise UnknownChallenge(challenge_id)
        try:
            signed_in = await answer_mfa(
                self.ctx, challenge.connection_id, code, trust_device=challenge.trust_device, after_lock=True
            )
        except (ConnectionNotFound, NotWaitingForCode, InvalidCredentials) as exc:
            self._drop(challenge)
            if isinstance(exc, ConnectionNotFound | NotWaitingForCode):  # removed, or signed in another way
                raise UnknownChallenge(challenge_id) from None
            raise
        if not signed_in:
            challenge.expires_at = utcnow() + timedelta(seconds=CHALLENGE_TTL_SECONDS)  # the new code's life
            with transaction(self.ctx.sessions) as session:
                if self._current(session, challenge) is not None:
                    self.ctx.vault.seal(
                        session, challenge.connection_id, CHALLENGE_PURPOSE, challenge.sealed()
                    )
            raise ChallengeRestarted(challenge_id)
        self._drop(challenge)
        return self._issue(challenge.connection_id)

    def _find(self, challenge_id: str) -> Challenge | None:
        """The pending, unexpired challenge with this id (its digest compared in constant time)."""
        digest = _digest(challenge_id)
        with self.ctx.sessions() as session:
            owners = session.scalars(
                select(VaultEntry.owner_id).where(VaultEntry.purpose == CHALLENGE_PURPOSE)
            )
            for connection_id in list(owners):
                kept = self.ctx.vault.open(session, connection_id, CHALLENGE_PURPOSE) or {}
                if hmac.compare_digest(str(kept.get("digest", "")), digest):
                    expires_at = datetime.fromisoformat(kept["expires_at"])
                    if expires_at < utcnow():
                        return None
                    return Challenge(challenge_id, connection_id, list(kept["methods"]), bool(kept["trust_device"]),
                                     expires_at)  # fmt: skip
        return None

    def _current(self, session: Session, challenge: Challenge) -> dict[str, Any] | None:
        """The vault's record of `challenge`, if it is still its connection's pending one."""
        kept = self.ctx.vault.open(session, challenge.connection_id, CHALLENGE_PURPOSE)
        if isinstance(kept, dict) and hmac.compare_digest(
            str(kept.get("digest", "")), _digest(challenge.challenge_id)
        ):
            return kept
        return None

    def _drop(self, challenge: Challenge) -> None:
        with transaction(self.ctx.sessions) as session:
            if self._current(session, challenge) is not None:  # not a newer sign-in's
                self.ctx.vault.delete(session, challenge.connection_id, CHALLENGE_PURPOSE)

    def _still_waiting(self, connection_id: str) -> bool:
        """Whether the connection still waits for a person's code: for the one the portal sent, or
        for a lock to end, after which a new one is sent."""
        with self.ctx.sessions() as session:
            connection = session.get(Connection, connection_id)
            if connection is None:
                return False
            return waits_for_code(connection) or connection.state == "locked"

    def _issue(self, connection_id: str) -> Authenticated:
        with transaction(self.ctx.sessions) as session:
            connection = get_connection(session, connection_id)
            if connection.state in {"requires_action", "locked"}:  # the portal just let us in
                change_state(session, connection, "healthy")
            _, secret = create_token(
                session, scopes=list(READ_SCOPES), name=f"session for {connection.username}", kind="session",
                connection_id=connection_id, expires_at=utcnow() + SESSION_TOKEN_LIFETIME,
            )  # fmt: skip
        return Authenticated(connection_id, secret)

    def _prune(self, session: Session) -> None:
        """Forget expired challenges (their codes are long dead)."""
        now = utcnow()
        for connection_id in list(
            session.scalars(select(VaultEntry.owner_id).where(VaultEntry.purpose == CHALLENGE_PURPOSE))
        ):
            kept = self.ctx.vault.open(session, connection_id, CHALLENGE_PURPOSE) or {}
            if "expires_at" not in kept or datetime.fromisoformat(kept["expires_at"]) < now:
                self.ctx.vault.delete(session, connection_id, CHALLENGE_PURPOSE)
