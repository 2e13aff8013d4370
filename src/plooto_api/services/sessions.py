"""Portal sessions of connections: answering an MFA challenge and replacing credentials.

These are the ways out of `requires_action`: the sync engine does not log in again by itself while
a connection waits for a code or a new password, so the portal's lockout is never tripped. A
person's action lifts those, but not the portal's lock: while it lasts, nothing signs in, even for a
person (`refuse_while_locked`), since every attempt during a lock is one more the portal holds
against the login.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from plooto_api.jobs.context import JobContext
from plooto_api.services.connections import (
    change_state,
    get_connection,
    load_credentials,
    login_blocked_reason,
    normalize_totp_secret,
    record_login_failure_of,
    update_credentials,
)
from plooto_api.store.database import transaction
from plooto_api.store.models import Connection
from plooto_api.upstream import (
    AccountLocked,
    Credentials,
    InvalidCredentials,
    MfaChallenge,
    MfaRequired,
    SessionExpired,
    TermsNotAccepted,
)

# What a portal MFA code looks like: the REST API and the CLI refuse anything else before it is
# sent, as every code the portal refuses counts toward its lockout of the account.
MFA_CODE_PATTERN = r"^\d{6,8}$"


async def refuse_while_locked(ctx: JobContext, connection_id: str) -> None:
    """AccountLocked while the portal's lock on this connection's login lasts, by the portal's clock
    (read from its login page: nothing else is sent); for a sign-in a person asked for (new
    credentials, a code), which the login guard lets through otherwise."""
    with ctx.sessions() as session:
        connection = get_connection(session, connection_id)
        if connection.state != "locked":
            return
        until = (connection.state_detail or {}).get("until")
    # Judged as the login guard judges it (the portal's clock read again while the lock seems on),
    # for a person: a password refused before the lock does not stop one giving a new one.
    portal = await ctx.portals.get(connection_id)
    reason = await ctx.portals.login_blocked(connection_id, portal, deliberate=True)
    if reason is not None:
        ends = datetime.fromisoformat(until) if isinstance(until, str) else None
        raise AccountLocked(f"not signing in to the portal: {reason}", until=ends, at=portal.portal_now())


def wait_for_code(ctx: JobContext, connection_id: str, method: str) -> None:
    """The portal sent a code (by `method`: sms, email) that a person must supply: the connection
    waits for it in requires_action (mfa), with its event, and no sync signs in again meanwhile (a
    new sign-in would have the portal send another code)."""
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        change_state(session, connection, "requires_action", reason="mfa", detail={"method": method})


async def complete_mfa(ctx: JobContext, connection_id: str, code: str, *, trust_device: bool = True) -> None:
    """Give the portal the code it sent; on success the connection is healthy again.

    Raises `plooto_api.upstream.InvalidMfaCode` when the portal refuses the code, AccountLocked when
    it locked the login (the connection is then `locked`, with the lock's end), SessionExpired when
    its pending sign-in is gone.
    """
    portal = await ctx.portals.get(connection_id)
    try:
        await portal.submit_mfa_code(code, trust_device=trust_device)
    except (AccountLocked, TermsNotAccepted) as exc:
        # Nothing signs in until the lock ends, or (now and then) until the person accepts the terms.
        record_login_failure_of(ctx.sessions, connection_id, exc)
        raise
    _signed_in(ctx, connection_id)


class NotWaitingForCode(Exception):
    """A code was given for a connection that waits for none (healthy, waiting for a new password or
    TOTP secret, locked, ...): nothing was sent to the portal."""

    def __init__(self, connection: Connection) -> None:
        self.connection_id = connection.id
        waiting = (
            f"{connection.state} ({connection.state_reason})" if connection.state_reason else connection.state
        )
        until = (connection.state_detail or {}).get("until")
        if connection.state == "locked" and until is not None:
            why: str | None = f"the portal locked this login until {until}"
        else:
            why = login_blocked_reason(connection)
        super().__init__(
            f"{connection.id} is {waiting}; it is not waiting for an MFA code" + (f": {why}" if why else "")
        )


def waits_for_code(connection: Connection) -> bool:
    """Whether the connection waits for a code a person gives: in requires_action (mfa) for the one
    the portal sent. Not when the portal refused the codes of its stored TOTP secret: that waits for
    a new secret, and a new sign-in would send the refused one's code again."""
    return (connection.state, connection.state_reason) == ("requires_action", "mfa") and (
        connection.state_detail or {}
    ).get("error") != "code_refused"


class TotpNotUsed(Exception):
    """A TOTP secret was given for a login whose portal asks for another kind of code (SMS): the
    portal never checks an authenticator app's code for it, so the secret is neither proven nor
    stored."""

    def __init__(self, method: str) -> None:
        super().__init__(
            f"this login's MFA codes come by {method.upper()}, not from an authenticator app: the portal "
            "takes no TOTP code for it, so the TOTP secret was not stored; nothing was changed"
        )


class NoCodeToSend(Exception):
    """The connection's codes come from an authenticator app (TOTP): the portal sends none."""


async def resend_code(ctx: JobContext, connection_id: str) -> bool:
    """Have the portal send a new code (SMS) to a connection waiting for one, as the MFA page's
    "send a new code" does; the code it had sent may have expired. When the portal's pending sign-in
    is gone, a new one is started (the password was accepted for it), which sends a code itself.

    True when a code is on its way; False when no code is needed any more (the session turned out
    signed in: the connection is healthy again). NotWaitingForCode for a connection waiting for
    none, NoCodeToSend for one whose codes come from an authenticator app; nothing is sent while the
    portal's lock lasts (AccountLocked)."""
    _check_waiting(ctx, connection_id, after_lock=False)
    with ctx.sessions() as session:
        method = (get_connection(session, connection_id).state_detail or {}).get("method")
    if method == "totp":
        raise NoCodeToSend(f"{connection_id} takes a code from an authenticator app; the portal sends none")
    await refuse_while_locked(ctx, connection_id)
    portal = await ctx.portals.get(connection_id)
    try:
        challenge = await portal.resend_mfa_code()
    except SessionExpired:
        try:
            await portal.ensure_logged_in(deliberate=True, new_code=True)
        except MfaRequired as exc:
            wait_for_code(ctx, connection_id, exc.challenge.method)
            return True
        except (AccountLocked, InvalidCredentials, TermsNotAccepted) as exc:
            record_login_failure_of(ctx.sessions, connection_id, exc)
            raise
        challenge = None
    if challenge is None:  # signed in (a trusted device, say): no code needed
        _signed_in(ctx, connection_id)
        return False
    return True


def _check_waiting(ctx: JobContext, connection_id: str, *, after_lock: bool) -> None:
    with ctx.sessions() as session:
        connection = get_connection(session, connection_id)
        if not (waits_for_code(connection) or (after_lock and connection.state == "locked")):
            raise NotWaitingForCode(connection)


async def answer_mfa(
    ctx: JobContext, connection_id: str, code: str, *, trust_device: bool = True, after_lock: bool = False
) -> bool:
    """A person's code: `complete_mfa`, or, when the portal dropped the pending sign-in first (its
    MFA step expired), a new sign-in: the code given was for the old one.

    Only for a connection that waits for a code (`waits_for_code`): any other is refused with
    NotWaitingForCode before anything is sent, since the new sign-in would send a password or TOTP
    code the portal may have refused. With `after_lock`, a `locked` connection waits too (for the
    lock's end, then a new code): that is for a sign-in a person started with a password the
    portal accepted (a `POST /authenticate` challenge); a code given to the connection itself
    (REST, CLI) passes False.

    True when the connection is signed in (the new sign-in needed no code: the device is trusted);
    False when the portal sent a new code, which the connection waits for as before. While the
    portal's lock lasts nothing is sent (AccountLocked); a lock or a refused password the portal
    answers puts the connection in its state (locked, requires_action) before it is raised. A
    refused code does not: the connection still waits for the right one.
    """
    _check_waiting(ctx, connection_id, after_lock=after_lock)
    await refuse_while_locked(ctx, connection_id)
    try:
        await complete_mfa(ctx, connection_id, code, trust_device=trust_device)
    except SessionExpired:
        return await _sign_in_again(ctx, connection_id, after_lock=after_lock)
    return True


async def _sign_in_again(ctx: JobContext, connection_id: str, *, after_lock: bool) -> bool:
    # Checked again: a sync may have found a refused password or a lock while the code was sent.
    _check_waiting(ctx, connection_id, after_lock=after_lock)
    portal = await ctx.portals.get(connection_id)
    try:
        await portal.ensure_logged_in(deliberate=True)  # the person answering a code asked for it
    except (MfaRequired, AccountLocked, InvalidCredentials, TermsNotAccepted) as exc:
        # The connection's state follows: waiting for the new code (after a lock, say), locked, or
        # waiting for a new password.
        record_login_failure_of(ctx.sessions, connection_id, exc)
        if isinstance(exc, MfaRequired):
            return False
        raise
    _signed_in(ctx, connection_id)
    return True


def _signed_in(ctx: JobContext, connection_id: str) -> None:
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        # Waiting for the code, or for a lock to end (which it has: the portal let us in).
        if connection.state == "locked" or (connection.state, connection.state_reason) == (
            "requires_action",
            "mfa",
        ):
            change_state(session, connection, "healthy")


async def replace_credentials(
    ctx: JobContext, connection_id: str, *, password: str | None = None, totp_secret: str | None = None
) -> None:
    """Give a connection a new password and/or TOTP secret, proven first: signed in with them on a
    session of their own (as the connection's trusted device), and stored with that session once
    the portal took them. The connection is then healthy again, or waits for the code the portal
    sent (a login without a TOTP secret on a device not trusted yet).

    Raises what the portal answered, with nothing stored: InvalidCredentials (the password refused),
    InvalidMfaCode (the codes of the TOTP secret refused), TotpNotUsed (a TOTP secret for a login
    whose codes come by SMS), UpstreamUnavailable and the like. A lock
    or new terms are the login's, and are recorded. While the portal's lock lasts nothing can be
    tried: they are stored unproven, the connection stays `locked`, and the first sign-in after
    the lock uses them."""
    with ctx.sessions() as session:
        connection = get_connection(session, connection_id)
        stored = load_credentials(session, ctx.vault, connection)
        device = ctx.vault.open(session, connection_id, "session_state")
        base_url, mode = connection.upstream_url, connection.login_mode
    new = Credentials(
        username=stored.username,
        password=stored.password if password is None else password,
        totp_secret=stored.totp_secret if totp_secret is None else normalize_totp_secret(totp_secret),
    )
    try:
        await refuse_while_locked(ctx, connection_id)
    except AccountLocked:
        _store_credentials(ctx, connection_id, password, totp_secret, proven=None)
        await ctx.portals.forget(connection_id)  # built again from the vault, with them, after the lock
        return
    known_method = (device or {}).get("mfa_method")  # as the portal's session said, when signed in before
    if totp_secret is not None and known_method not in (None, "totp"):
        # Found out without signing in: that would have the portal text the user a code for nothing.
        raise TotpNotUsed(known_method)
    challenge: MfaChallenge | None = None
    locked = False  # the portal's lock, found now
    # As the connection's trusted device, so a password needs no SMS code; but a new TOTP secret is
    # proven only where the portal asks for a code: without the device.
    trusted = device if totp_secret is None else None
    async with ctx.portals.probe(base_url, new, login_mode=mode, device_from=trusted) as (probe, store):
        try:
            await probe.ensure_logged_in(deliberate=True)
        except MfaRequired as exc:
            if totp_secret is not None:  # a TOTP secret answers the portal's TOTP step by itself
                raise TotpNotUsed(exc.challenge.method) from None
            challenge = exc.challenge  # the portal took the password, and sent a code
        except AccountLocked as exc:
            # A lock the connection had not met yet: recorded, then as with a lock known before.
            record_login_failure_of(ctx.sessions, connection_id, exc)
            locked = True
        except TermsNotAccepted as exc:
            record_login_failure_of(ctx.sessions, connection_id, exc)
            raise
        proven = None if locked else dict(store.state or {})
    _store_credentials(ctx, connection_id, password, totp_secret, proven=proven, challenge=challenge)
    # Built again from the vault: with the proven session, or with them after the lock.
    await ctx.portals.forget(connection_id)


def _store_credentials(
    ctx: JobContext, connection_id: str, password: str | None, totp_secret: str | None, *,
    proven: dict[str, Any] | None, challenge: MfaChallenge | None = None,
) -> None:  # fmt: skip
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        update_credentials(session, ctx.vault, connection, password=password, totp_secret=totp_secret)
        if proven is None:  # locked: a password refused before the lock is replaced all the same
            if password is not None and connection.state_detail:
                connection.state_detail = {
                    k: v for k, v in connection.state_detail.items() if k != "password_refused"
                }
        else:
            ctx.vault.seal(session, connection_id, "session_state", proven)
            if challenge is not None:
                change_state(session, connection, "requires_action", reason="mfa",
                             detail={"method": challenge.method})  # fmt: skip
            elif connection.state in ("requires_action", "locked"):
                change_state(session, connection, "healthy", detail={"credentials_replaced": True})
