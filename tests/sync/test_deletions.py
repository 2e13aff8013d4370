"""Objects deleted in the portal: an incremental pull cannot see them (they are simply no longer
listed), so each feed is listed whole again once `sync_reconcile_interval_seconds` of the portal's
clock have passed, and what it did not list is asked about one by one: deleted on a 404 only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select

from plooto_api import mapping
from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.sync import engine as sync_engine
from plooto_api.sync.engine import SyncEngine, vouched_types
from plooto_api.upstream import FEEDS, FETCHABLE_TYPES

MODELS: dict[str, Any] = {"bill": models.Bill, "vendor": models.Vendor, "customer": models.Customer}


def _made_then_deleted_in_the_portal(control: httpx.Client) -> dict[str, str]:
    """A vendor, a customer and a bill nothing refers to, made by another portal user; portal ids."""
    made = {
        "vendor": control.post("/mutate", json={"action": "createVendor"}).json()["changed"][0],
        "customer": control.post("/mutate", json={"action": "createCustomer"}).json()["changed"][0],
        "bill": control.post("/mutate", json={"action": "createBills", "count": 1}).json()["changed"][0],
    }
    return made


def _delete_in_the_portal(control: httpx.Client, made: dict[str, str]) -> None:
    for object_type, upstream_id in made.items():
        action = f"delete{object_type.capitalize()}"
        control.post("/mutate", json={"action": action, f"{object_type}Id": upstream_id}).raise_for_status()


def _deleted(ctx: JobContext) -> dict[str, set[str]]:
    """Upstream ids of the rows marked deleted, by object type."""
    found: dict[str, set[str]] = {}
    with ctx.sessions() as session:
        for object_type, spec in mapping.OBJECT_MAPS.items():
            model: Any = spec.model
            if not hasattr(model, "deleted_at"):
                continue
            ids = set(session.scalars(select(model.upstream_id).where(model.deleted_at.is_not(None))))
            if ids:
                found[object_type] = ids
    return found


def _deleted_events(ctx: JobContext) -> Counter[str]:
    with ctx.sessions() as session:
        return Counter(session.scalars(select(models.Event.type).where(models.Event.type.like("%.deleted"))))


def _event_count(ctx: JobContext) -> int:
    with ctx.sessions() as session:
        return len(session.scalars(select(models.Event.id)).all())


def _links_of(ctx: JobContext, object_type: str, upstream_id: str) -> list[models.SyncMapping]:
    with ctx.sessions() as session:
        row = session.scalars(
            select(MODELS[object_type]).where(MODELS[object_type].upstream_id == upstream_id)
        ).one()
        return list(session.scalars(select(models.SyncMapping).where(models.SyncMapping.object_id == row.id)))


async def test_objects_deleted_in_the_portal_are_marked_deleted_by_the_next_whole_listing(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    made = _made_then_deleted_in_the_portal(control)
    control.post("/clock", json={"advance_minutes": 20}).raise_for_status()  # the bill reaches QuickBooks
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    links = _links_of(ctx, "bill", made["bill"])
    assert links and all(link.deleted_at is None for link in links)

    _delete_in_the_portal(control, made)
    # An incremental pull lists what changed; a deleted object does not show there at all.
    assert (await engine.sync_connection(connection_id)).ok
    assert _deleted(ctx) == {} and not _deleted_events(ctx)

    # A day later by the portal's clock every feed is listed whole again; the three are missing,
    # and the portal answers 404 for each: marked deleted, with the bill's accounting link.
    control.post("/clock", json={"advance_hours": 25}).raise_for_status()
    before = _event_count(ctx)
    report = await engine.sync_connection(connection_id)
    assert report.ok, report
    expected = {object_type: {upstream_id} for object_type, upstream_id in made.items()}
    expected["sync_mapping"] = {link.upstream_id for link in links}
    # What the run reports (the CLI prints it) counts their events with the others.
    assert report.counts.events == _event_count(ctx) - before
    assert _deleted(ctx) == expected
    assert _deleted_events(ctx) == Counter(
        {"bill.deleted": 1, "vendor.deleted": 1, "customer.deleted": 1, "sync_mapping.deleted": len(links)}
    )
    # Once: the next listings find them marked already.
    control.post("/clock", json={"advance_hours": 25}).raise_for_status()
    assert (await engine.sync_connection(connection_id)).ok
    assert _deleted(ctx) == expected and sum(_deleted_events(ctx).values()) == 3 + len(links)


async def test_a_lookup_that_fails_deletes_nothing_and_is_asked_again_an_hour_later(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    made = _made_then_deleted_in_the_portal(control)
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    _delete_in_the_portal(control, made)
    control.post("/clock", json={"advance_hours": 25}).raise_for_status()
    fault = {"kind": "error", "status": 503, "method": "GET", "pathPattern": f"/bills/{made['bill']}$"}
    control.post("/faults", json=fault).raise_for_status()

    failed = await engine.sync_connection(connection_id)
    assert [(feed, type(exc).__name__) for _, feed, exc in failed.failed_feeds] == [
        ("bills", "UpstreamUnavailable")
    ]
    assert "bill" not in _deleted(ctx)  # the portal failing to answer is not an answer

    control.delete("/faults").raise_for_status()
    # Not at every run (each would list the feed whole again), but an hour later.
    assert (await engine.sync_connection(connection_id)).ok
    assert "bill" not in _deleted(ctx)
    control.post("/clock", json={"advance_minutes": 61}).raise_for_status()
    assert (await engine.sync_connection(connection_id)).ok
    assert _deleted(ctx)["bill"] == {made["bill"]}


async def test_no_whole_listing_when_the_interval_is_zero(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    made = _made_then_deleted_in_the_portal(control)
    ctx.settings.sync_reconcile_interval_seconds = 0
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    _delete_in_the_portal(control, made)
    control.post("/clock", json={"advance_hours": 24 * 30}).raise_for_status()
    assert (await engine.sync_connection(connection_id)).ok
    assert _deleted(ctx) == {}


def test_each_feed_vouches_only_for_the_rows_it_lists() -> None:
    # A type two feeds list (payables' and receivables' payments) needs, for each of them, the
    # column that tells their rows apart; otherwise one feed's listing would ask about the other's.
    listed_by: dict[str, list[str]] = {}
    for feed in FEEDS:
        for object_type in feed.object_types:
            listed_by.setdefault(object_type, []).append(feed.name)
    for object_type, feeds in listed_by.items():
        if object_type in FETCHABLE_TYPES and len(feeds) > 1:
            for feed_name in feeds:
                assert (feed_name, object_type) in sync_engine.SHARED_TYPE_SCOPES, (feed_name, object_type)
    payments = next(feed for feed in FEEDS if feed.name == "payments")
    assert vouched_types(payments) == {
        "payment": {"direction": "payable"}, "fx_conversion": {}, "transaction": {},
    }  # fmt: skip


async def test_a_payment_held_after_its_debit_keeps_its_transactions_through_a_whole_listing(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A held payment's normalization left out its debit and fee (OnHold was not a debited status):
    # the whole listing then found them missing, and the portal's payment confirmed it, so they
    # were marked deleted, and came back as updated on release.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        payment = session.scalars(
            select(models.Payment).where(models.Payment.status == "in_transit").order_by(models.Payment.id)
        ).first()
        assert payment is not None, "the seed has payments in transit"
        kept = set(
            session.scalars(
                select(models.Transaction.upstream_id).where(models.Transaction.payment_id == payment.id)
            )
        )
        upstream_id = payment.upstream_id
    assert kept, "a payment in transit has its debit"
    control.post(
        "/mutate", json={"action": "holdPayment", "paymentId": upstream_id, "reason": ""}
    ).raise_for_status()
    control.post("/clock", json={"advance_hours": 25}).raise_for_status()
    assert (await engine.sync_connection(connection_id)).ok
    assert "transaction" not in _deleted(ctx)
    with ctx.sessions() as session:
        held = session.scalars(select(models.Payment).where(models.Payment.upstream_id == upstream_id)).one()
        assert held.hold_reason  # held, though the portal gave no reason
        types = session.scalars(select(models.Event.type).where(models.Event.object_id == held.id)).all()
    assert "payment.held" in types
