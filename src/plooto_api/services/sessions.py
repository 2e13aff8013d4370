"""Portal sessions of connections: answering an MFA challenge and replacing credentials.

These are the ways out of `requires_action`: the sync engine does not log in again by itself while
a connection waits for a code or a new password, so the portal's lockout is never tripped.
"""

from __future__ import annotations

from plooto_api.jobs.context import JobContext
from plooto_api.services.connections import change_state, get_connection, update_credentials
from plooto_api.store.database import transaction
from plooto_api.upstream import MfaRequired, SessionExpired


def wait_for_code(ctx: JobContext, connection_id: str, method: str) -> None:
    """The portal sent a code (by `method`: sms, email) that a person must supply: the connection
    waits for it in requires_action (mfa), with its event, and no sync signs in again meanwhile (a
    new sign-in would have the portal send another code)."""
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        change_state(session, connection, "requires_action", reason="mfa", detail={"method": method})


async def complete_mfa(ctx: JobContext, connection_id: str, code: str, *, trust_device: bool = True) -> None:
    """Give the portal the code it sent; on success the connection is healthy again.

    Raises `plooto_api.upstream.InvalidMfaCode` when the portal refuses the code.
    """
    portal = await ctx.portals.get(connection_id)
    await portal.submit_mfa_code(code, trust_device=trust_device)
    _signed_in(ctx, connection_id)


async def answer_mfa(ctx: JobContext, connection_id: str, code: str, *, trust_device: bool = True) -> bool:
    """`complete_mfa`, or, when the portal dropped the pending sign-in first (its MFA step expired),
    a new sign-in: the code given was for the old one.

    True when the connection is signed in (the new sign-in needed no code: the device is trusted);
    False when the portal sent a new code, which the connection waits for as before.
    """
    try:
        await complete_mfa(ctx, connection_id, code, trust_device=trust_device)
    except SessionExpired:
        return await _sign_in_again(ctx, connection_id)
    return True


async def _sign_in_again(ctx: JobContext, connection_id: str) -> bool:
    portal = await ctx.portals.get(connection_id)
    try:
        await portal.ensure_logged_in(deliberate=True)  # the person answering a code asked for it
    except MfaRequired:
        return False
    _signed_in(ctx, connection_id)
    return True


def _signed_in(ctx: JobContext, connection_id: str) -> None:
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        if connection.state == "requires_action" and connection.state_reason == "mfa":
            change_state(session, connection, "healthy")


async def replace_credentials(
    ctx: JobContext, connection_id: str, *, password: str | None = None, totp_secret: str | None = None
) -> None:
    """Store a new password and/or TOTP secret; a connection waiting for them may log in again."""
    with transaction(ctx.sessions) as session:
        connection = get_connection(session, connection_id)
        update_credentials(session, ctx.vault, connection, password=password, totp_secret=totp_secret)
        if connection.state in {"requires_action", "locked"}:
            change_state(session, connection, "healthy", detail={"credentials_replaced": True})
    await ctx.portals.forget(connection_id)
