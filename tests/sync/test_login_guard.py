"""A refused sign-in, whoever tried it (a sync, a keep-alive, a fresh read, a write), puts its
connection in the state it calls for, and from then on nothing signs in again by itself: that is
how a gateway trips the portal's lockout. Only a person (new credentials, a code) or the lock's end,
by the portal's clock, lifts it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select

from plooto_api.jobs import JobContext
from plooto_api.services import portals, refresh
from plooto_api.services.connections import get_connection, update_credentials
from plooto_api.services.sessions import replace_credentials
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.sync import tasks
from plooto_api.sync.engine import SyncEngine
from plooto_api.upstream import (
    AccountLocked,
    LoginBlocked,
    SessionReplaced,
)
from support.portal import lock_login_from_elsewhere

from .conftest import CONTROLLER, PASSWORD, connection_events, connection_row


def _a_bill(ctx: JobContext) -> models.Bill:
    with ctx.sessions() as session:
        bill = session.scalars(select(models.Bill).limit(1)).first()
        assert bill is not None
        return bill


async def test_a_lock_found_by_a_keep_alive_stops_every_sign_in_until_the_portal_lifts_it(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, sandbox: str
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    await lock_login_from_elsewhere(sandbox, control, CONTROLLER)

    with pytest.raises(AccountLocked):
        await tasks.keep_alive(ctx, connection_id)
    row = connection_row(ctx, connection_id)
    assert row.state == "locked" and row.state_detail and row.state_detail["until"]
    assert connection_events(ctx, connection_id)[-1] == "connection.locked"

    portal = await ctx.portals.get(connection_id)
    logins = portal.stats.logins
    await tasks.keep_alive(ctx, connection_id)  # nothing to keep alive: no sign-in, no error
    blocked = await engine.sync_connection(connection_id, cadence="fast")
    assert blocked.error and "locked this login until" in blocked.error
    with pytest.raises(refresh.RefreshFailed) as refused:
        await refresh.refresh_object(ctx, _a_bill(ctx))
    assert (refused.value.status, refused.value.code) == (409, "connection_requires_action")
    assert portal.stats.logins == logins  # none of them tried the portal's login
    assert connection_row(ctx, connection_id).state == "locked"

    # A new password given meanwhile is kept for then: the lock is the portal's, and stays.
    await replace_credentials(ctx, connection_id, password=PASSWORD)
    assert connection_row(ctx, connection_id).state == "locked"
    assert (await engine.sync_connection(connection_id, cadence="fast")).error
    portal = await ctx.portals.get(connection_id)  # the new credentials' session
    logins = portal.stats.logins
    assert logins == 0

    # The lock ends by the portal's clock (the sandbox's moves when told): the next sync signs in.
    control.post("/clock", json={"advance_minutes": 20}).raise_for_status()
    back = await engine.sync_connection(connection_id, cadence="fast")
    assert back.ok and back.state == "healthy", back.error
    assert portal.stats.logins == logins + 1
    assert connection_events(ctx, connection_id)[-1] == "connection.repaired"


async def test_a_new_password_meeting_a_lock_not_seen_yet_is_kept_for_after_it(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, sandbox: str
) -> None:
    # The lock found by the new password's own sign-in was recorded, but the password was thrown
    # away (429): sent again, the same request was kept, as with a lock the connection knew.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with transaction(ctx.sessions) as session:  # the stored one goes stale: the new one must be kept
        update_credentials(
            session, ctx.vault, get_connection(session, connection_id), password="wrong-" + PASSWORD
        )
    await lock_login_from_elsewhere(sandbox, control, CONTROLLER)
    assert connection_row(ctx, connection_id).state == "healthy"  # not seen yet

    await replace_credentials(ctx, connection_id, password=PASSWORD)
    row = connection_row(ctx, connection_id)
    assert row.state == "locked" and row.state_detail and row.state_detail["until"]
    control.post("/clock", json={"advance_minutes": 20}).raise_for_status()
    back = await engine.sync_connection(connection_id, cadence="fast")
    assert back.ok and back.state == "healthy", back.error  # signed in with the password kept


async def test_a_password_refused_to_a_fresh_read_is_not_tried_again(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    bill = _a_bill(ctx)
    # The password changed in the portal (here: the gateway holds a wrong one) and the session ended.
    with transaction(ctx.sessions) as session:
        update_credentials(
            session, ctx.vault, get_connection(session, connection_id), password="wrong-" + PASSWORD
        )
    control.post("/sessions/revoke", json={"email": CONTROLLER}).raise_for_status()

    with pytest.raises(refresh.RefreshFailed) as first:
        await refresh.refresh_object(ctx, bill)
    assert first.value.code == "connection_requires_action"
    row = connection_row(ctx, connection_id)
    assert (row.state, row.state_reason) == ("requires_action", "password")
    portal = await ctx.portals.get(connection_id)
    assert portal.stats.logins == 1
    for _ in range(3):
        with pytest.raises(refresh.RefreshFailed, match="waiting for a new password"):
            await refresh.refresh_object(ctx, bill)
    with pytest.raises(LoginBlocked):
        await portal.ensure_logged_in()
    assert portal.stats.logins == 1  # one refusal; five would have locked the login

    await replace_credentials(ctx, connection_id, password=PASSWORD)  # a person gives the new one
    await refresh.refresh_object(ctx, bill)
    assert connection_row(ctx, connection_id).state == "healthy"


async def test_a_session_replaced_while_in_use_finishes_its_callers_work_and_never_signs_in_again(
    ctx: JobContext,
    make_connection: Callable[..., str],
    control: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A write between its send and its read-back holds the connection's session while someone signs
    # the login in again or replaces its password: its HTTP client used to be closed under it
    # ("Cannot send a request, as the client has been closed"), leaving the write running.
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    bill = _a_bill(ctx)
    with ctx.sessions() as session:
        company = session.get(models.Company, bill.company_id)
        assert company is not None
        company_upstream_id = company.upstream_id
    held = await ctx.portals.get(connection_id)
    await ctx.portals.forget(connection_id)  # as POST /authenticate or PATCH /connections/{id} do
    assert await held.fetch_object(company_upstream_id, "bill", bill.upstream_id) is not None
    control.post("/sessions/revoke", json={"email": CONTROLLER}).raise_for_status()
    logins = held.stats.logins
    with pytest.raises(SessionReplaced):  # retryable (an UpstreamUnavailable): the new session signs in
        await held.fetch_object(company_upstream_id, "bill", bill.upstream_id)
    assert held.stats.logins == logins
    fresh = await ctx.portals.get(connection_id)
    assert fresh is not held
    assert await fresh.fetch_object(company_upstream_id, "bill", bill.upstream_id) is not None

    monkeypatch.setattr(portals, "RETIRED_IDLE_SECONDS", -1.0)  # unused from now on: closed at the next look
    await ctx.portals.get(connection_id)
    with pytest.raises(RuntimeError, match="closed"):
        await held.fetch_object(company_upstream_id, "bill", bill.upstream_id)
