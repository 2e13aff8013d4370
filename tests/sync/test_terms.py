"""New terms of service in the portal: a sync that meets them stops every feed and leaves the
connection `requires_action` (terms), once; writes are refused at admission and the store stays
readable. The gateway never accepts the terms; it tries to sign in again by itself at most every
TERMS_RETRY_MINUTES (by the portal's clock), or at once when a person asks, and recovers to healthy
(`connection.repaired`) once the person has accepted them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import httpx
import pytest
from sqlalchemy import func, select

from plooto_api.jobs import JobContext
from plooto_api.services import objects as object_service
from plooto_api.services import writes
from plooto_api.services.authentication import sign_in
from plooto_api.services.connections import TERMS_RETRY_MINUTES
from plooto_api.services.tokens import Principal
from plooto_api.store import models
from plooto_api.store.scope import AccessScope
from plooto_api.sync.engine import SyncEngine
from plooto_api.upstream import LoginBlocked, TermsNotAccepted

from .conftest import CONTROLLER, PASSWORD, TOTP_SECRET, connection_events, connection_row

EVERYONE = Principal(token_id="test", scopes=frozenset({"*"}), access=AccessScope.unrestricted())


def _terms_changes(ctx: JobContext, connection_id: str) -> int:
    with ctx.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(models.ConnectionStateChange)
                .where(
                    models.ConnectionStateChange.connection_id == connection_id,
                    models.ConnectionStateChange.reason == "terms",
                )
            )
            or 0
        )


def _portal_now(control: httpx.Client) -> datetime:
    return datetime.fromisoformat(control.get("/clock").json()["now"].replace("Z", "+00:00"))


def _a_bill(ctx: JobContext) -> models.Bill:
    with ctx.sessions() as session:
        bill = session.scalars(select(models.Bill).limit(1)).first()
        assert bill is not None
        return bill


def _assert_waiting_for_terms(ctx: JobContext, connection_id: str) -> models.Connection:
    row = connection_row(ctx, connection_id)
    assert (row.state, row.state_reason) == ("requires_action", "terms")
    assert row.state_detail and "accept them" in row.state_detail["message"]
    return row


async def test_a_sync_meeting_new_terms_waits_for_the_person_then_recovers(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    control.post("/mutate", json={"action": "publishTerms"}).raise_for_status()

    found = await engine.sync_connection(connection_id, cadence="fast")
    assert found.state == "requires_action" and found.error and "TermsNotAccepted" in found.error
    row = _assert_waiting_for_terms(ctx, connection_id)
    retry_at = datetime.fromisoformat(row.state_detail["retry_at"])  # type: ignore[index]
    assert (retry_at - _portal_now(control)).total_seconds() == pytest.approx(TERMS_RETRY_MINUTES * 60, abs=5)
    assert connection_events(ctx, connection_id)[-1] == "connection.requires_action"
    assert PASSWORD not in str(row.state_detail) and TOTP_SECRET not in str(row.state_detail)

    # Writes are refused before anything is recorded or sent; the store is read as before.
    bill = _a_bill(ctx)
    with ctx.sessions() as session, pytest.raises(writes.WriteRefused) as refused:
        writes.prepare_create_payment(session, EVERYONE, {"bill_id": bill.id})
    assert (refused.value.status, refused.value.code) == (409, "connection_requires_action")
    assert "terms of service" in str(refused.value)
    with ctx.sessions() as session:
        bills = next(r for r in object_service.RESOURCES if r.object_type == "bill")
        assert object_service.row_for(session, bills, EVERYONE.access, bill.id) is not None

    # Before the retry time, a sync sends no sign-in (nor any call a sign-in would need).
    portal = await ctx.portals.get(connection_id)
    logins = portal.stats.logins
    control.post("/clock", json={"advance_minutes": TERMS_RETRY_MINUTES - 5}).raise_for_status()
    early = await engine.sync_connection(connection_id, cadence="fast")
    assert early.error and early.error.startswith("not syncing") and "terms of service" in early.error
    assert portal.stats.logins == logins
    with pytest.raises(LoginBlocked, match="terms of service"):  # nor a read outside a sync
        await portal.ensure_logged_in()
    assert portal.stats.logins == logins
    _assert_waiting_for_terms(ctx, connection_id)

    # The person accepts them in the portal; at the retry time (the portal's clock) the sync recovers.
    control.post("/mutate", json={"action": "acceptTerms", "userEmail": CONTROLLER}).raise_for_status()
    control.post("/clock", json={"advance_minutes": 5}).raise_for_status()
    back = await engine.sync_connection(connection_id, cadence="fast")
    assert back.ok and back.state == "healthy", back.error
    assert connection_row(ctx, connection_id).state_reason is None
    events = connection_events(ctx, connection_id)
    assert events[-1] == "connection.repaired"
    assert events.count("connection.requires_action") == 1
    assert _terms_changes(ctx, connection_id) == 1


async def test_terms_published_mid_sync_stop_every_feed_and_are_recorded_once(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    published: list[str] = []

    def publish_once(company: str, feed: str, done: int, total: int | None) -> None:
        if not published:  # the first page is in: the portal publishes new terms meanwhile
            control.post("/mutate", json={"action": "publishTerms"}).raise_for_status()
            published.append(feed)

    report = await SyncEngine(ctx).sync_connection(connection_id, progress=publish_once)
    assert published
    assert report.state == "requires_action" and report.error and "TermsNotAccepted" in report.error
    assert report.failed_feeds == []  # the login, not a feed: every feed stopped, none counted failing
    _assert_waiting_for_terms(ctx, connection_id)
    assert connection_events(ctx, connection_id).count("connection.requires_action") == 1
    assert _terms_changes(ctx, connection_id) == 1


async def test_a_person_asking_signs_in_at_once_and_nothing_accepts_the_terms_for_them(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, sandbox: str
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    control.post("/mutate", json={"action": "publishTerms"}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).state == "requires_action"

    # Asked by a person (the CLI's sync) before the retry time: tried now, still refused.
    asked = await engine.sync_connection(connection_id, cadence="fast", deliberate=True)
    assert asked.state == "requires_action" and asked.error and "TermsNotAccepted" in asked.error
    _assert_waiting_for_terms(ctx, connection_id)
    assert connection_events(ctx, connection_id).count("connection.requires_action") == 1  # no news

    # POST /authenticate with the same credentials: refused while the terms wait, and they still do.
    with pytest.raises(TermsNotAccepted):
        await sign_in(
            ctx, username=CONTROLLER, password=PASSWORD, upstream_url=sandbox, totp_secret=TOTP_SECRET
        )
    _assert_waiting_for_terms(ctx, connection_id)

    control.post("/mutate", json={"action": "acceptTerms", "userEmail": CONTROLLER}).raise_for_status()
    signed = await sign_in(
        ctx, username=CONTROLLER, password=PASSWORD, upstream_url=sandbox, totp_secret=TOTP_SECRET
    )
    assert signed.connection_id == connection_id and not signed.created
    assert connection_row(ctx, connection_id).state == "healthy"
    assert connection_events(ctx, connection_id)[-1] == "connection.repaired"
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
