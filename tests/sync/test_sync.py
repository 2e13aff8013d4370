"""Sync against the real sandbox over loopback: full pull, incremental pull, lifecycle events,
MFA by SMS, restart without MFA, crash and resume, drift, session expiry and bad passwords."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plooto_api import mapping
from plooto_api.cli import CliError
from plooto_api.cli.connections import run_connect, run_sync
from plooto_api.jobs import JobContext
from plooto_api.services import authentication
from plooto_api.services.connections import change_state
from plooto_api.services.sessions import complete_mfa, replace_credentials
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.sync import engine as sync_engine
from plooto_api.sync.engine import SyncEngine
from plooto_api.sync.upsert import ApplyCounts, apply_records, company_ids
from support.portal import lock_login_from_elsewhere
from support.postgres import race_behind

from .conftest import CLERK, CONTROLLER, PASSWORD, TOTP_SECRET, connection_events, connection_row

BILLS_PER_COMPANY = 30


class SimulatedCrash(BaseException):
    """Stands for the worker dying between two pages (a BaseException, as the engine handles the
    Exceptions of a feed by going on with the others)."""


COMPANIES = 2


def _count(session: Session, model: Any, **where: Any) -> int:
    stmt = select(func.count()).select_from(model)
    for column, value in where.items():
        stmt = stmt.where(getattr(model, column) == value)
    return int(session.scalar(stmt) or 0)


def _event_types(ctx: JobContext) -> Counter[str]:
    with ctx.sessions() as session:
        return Counter(session.scalars(select(models.Event.type)))


async def test_initial_sync_mirrors_every_object_type(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    connection_id = make_connection()
    report = await SyncEngine(ctx).sync_connection(connection_id)
    assert report.ok, report.error or report.drift
    with ctx.sessions() as session:
        assert _count(session, models.Company) == COMPANIES
        assert _count(session, models.Bill) == COMPANIES * BILLS_PER_COMPANY
        for model in (models.Vendor, models.Customer, models.Payment, models.Invoice, models.BankAccount,
                      models.PortalUser, models.ApprovalRule, models.RecurringInvoice):  # fmt: skip
            assert _count(session, model) > 0, model.__name__
        statuses = set(session.scalars(select(models.Bill.status)))
        assert {"pending_approval", "paid"} <= statuses
        cursors = session.scalars(select(models.SyncCursor)).all()
        assert cursors and all(c.full_sync_completed_at is not None for c in cursors)
    events = _event_types(ctx)
    assert events["bill.created"] == COMPANIES * BILLS_PER_COMPANY
    # The reminders an invoice had before the gateway looked are history: they made an
    # `invoice.updated` of every such invoice, the portal having changed nothing.
    assert events["invoice.updated"] == 0
    # Nor is a recurring plan's naming the invoices it made, which come in a later feed: a plan was
    # announced as created, then updated with the invoices it had all along.
    assert events["recurring_invoice.created"] > 0 and events["recurring_invoice.updated"] == 0
    _assert_documents_match_columns(ctx)
    _assert_plans_name_their_invoices(ctx)
    with ctx.sessions() as session:
        # A created object's event holds the same JSON object as its row's document (stored once
        # serialized, not as a JSON string of it).
        for bill in session.scalars(select(models.Bill).order_by(models.Bill.id).limit(5)):
            created = session.scalars(
                select(models.Event).where(
                    models.Event.object_id == bill.id, models.Event.type == "bill.created"
                )
            ).one()
            assert isinstance(created.data, dict) and created.data == json.loads(bill.document)
    assert connection_row(ctx, connection_id).state == "healthy"
    assert connection_row(ctx, connection_id).last_synced_at is not None


async def test_incremental_sync_fetches_only_what_changed(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    first = await engine.sync_connection(connection_id)
    assert first.ok
    company_upstream_id = _first_company(ctx)
    # The clock stays put: changes made at the same instant as the last sync must still be seen.
    changed = control.post(
        "/mutate", json={"action": "modifyBills", "companyId": company_upstream_id, "count": 3}
    )
    changed.raise_for_status()
    again = await engine.sync_connection(connection_id, cadence="fast")
    assert again.ok, again.error
    assert again.counts.created == 0
    assert again.counts.by_type.get("bill") == 3
    assert _event_types(ctx)["bill.updated"] == 3
    portal = await ctx.portals.get(connection_id)
    before = portal.stats.requests
    nothing = await engine.sync_connection(connection_id, cadence="fast")
    assert nothing.counts.created == 0 and nothing.counts.updated == 0
    # One page per feed and company: records sharing the last instant of a feed long past (reminders
    # sent in one batch) are not listed again; those at the frozen clock's instant (the bills just
    # changed) are, and compare unchanged.
    fast_feeds = len(sync_engine.feeds_for("fast"))
    assert portal.stats.requests - before == 1 + COMPANIES * fast_feeds  # the company list, then feeds
    with ctx.sessions() as session:
        cursors = session.scalars(
            select(models.SyncCursor).where(models.SyncCursor.connection_id == connection_id)
        )
        exclusive = {(c.object_type, c.company_upstream_id): c.page_state["exclusive"] for c in cursors}
    assert all(exclusive[("reminders", c)] for c in {company for _, company in exclusive})
    assert exclusive[("bills", company_upstream_id)] is False


async def test_a_new_vendors_bill_is_synced_with_its_vendor_between_vendor_syncs(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    company_upstream_id = _first_company(ctx)
    # Someone adds a payee and bills it; the next sync is of open items only (vendors come every
    # few minutes), and the bill refers to a vendor the store has never seen.
    created = control.post("/mutate", json={"action": "createVendor", "companyId": company_upstream_id,
                                            "name": "Fresh Fields Co."})  # fmt: skip
    vendor_upstream_id = created.json()["changed"][0]
    billed = control.post("/mutate", json={"action": "createBills", "companyId": company_upstream_id,
                                           "vendorId": vendor_upstream_id, "count": 1})  # fmt: skip
    bill_upstream_id = billed.json()["changed"][0]
    portal = await ctx.portals.get(connection_id)
    before = portal.stats.requests
    report = await engine.sync_connection(connection_id, cadence="fast")
    assert report.ok, report.error
    # The vendor is read on its own (one request more than the feeds) and written with the bill.
    assert portal.stats.requests - before == 1 + COMPANIES * len(sync_engine.feeds_for("fast")) + 1
    with ctx.sessions() as session:
        vendor = session.scalars(
            select(models.Vendor).where(models.Vendor.upstream_id == vendor_upstream_id)
        ).one()
        bill = session.scalars(select(models.Bill).where(models.Bill.upstream_id == bill_upstream_id)).one()
        assert vendor.name == "Fresh Fields Co." and bill.vendor_id == vendor.id
        assert json.loads(bill.document)["vendor_id"] == vendor.id
    assert _event_types(ctx)["vendor.created"] == _count_vendors(ctx)
    # The vendors feed, when it runs, finds the vendor as it is already stored.
    slow = await engine.sync_connection(connection_id, cadence="slow")
    assert slow.ok and slow.counts.created == 0


def _count_vendors(ctx: JobContext) -> int:
    with ctx.sessions() as session:
        return _count(session, models.Vendor)


async def test_a_first_sync_by_the_fast_schedule_pulls_reference_data_first(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    # A gateway that starts with a connection never synced (added by `connect --no-sync`, or
    # stopped during its first sync) runs its near-real-time schedule first.
    connection_id = make_connection()
    report = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert report.ok, report.error
    with ctx.sessions() as session:
        assert _count(session, models.Vendor) > 0 and _count(session, models.Customer) > 0
        assert session.scalar(select(func.count()).where(models.Bill.vendor_id.is_(None))) == 0
        assert session.scalar(select(func.count()).where(models.Invoice.customer_id.is_(None))) == 0
        cursors = session.scalars(select(models.SyncCursor)).all()
        assert {c.object_type for c in cursors} == {feed.name for feed in sync_engine.FEEDS}
    # Once each feed has been pulled whole, the fast schedule pulls only its own.
    portal = await ctx.portals.get(connection_id)
    before = portal.stats.requests
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok
    assert portal.stats.requests - before == 1 + COMPANIES * len(sync_engine.feeds_for("fast"))


def _an_approved_bill(ctx: JobContext) -> tuple[str, str]:
    """An open, approved bill of the seed, to pay: its portal id and its company's."""
    with ctx.sessions() as session:
        bill = session.scalars(
            select(models.Bill).where(models.Bill.status == "approved").order_by(models.Bill.id)
        ).first()
        assert bill is not None, "the seed has open, approved bills"
        return bill.upstream_id, session.get_one(models.Company, bill.company_id).upstream_id


async def test_payment_lifecycle_becomes_events(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    bill_upstream_id, _ = _an_approved_bill(ctx)
    created = control.post("/mutate", json={"action": "createPayment", "billId": bill_upstream_id,
                                            "userEmail": "controller@northwind-cpa.test"})  # fmt: skip
    assert created.status_code == 200, created.text
    payment_upstream_id = created.json()["changed"][0]
    control.post("/mutate", json={"action": "approvePayment", "paymentId": payment_upstream_id,
                                  "userEmail": CLERK})  # fmt: skip
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _event_types(ctx)["payment.created"] >= 1
    control.post("/clock", json={"advance_days": 3}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _event_types(ctx)["payment.status_updated"] >= 1
    # Slow rails (cheque, an unclaimed e-mail transfer) may still be travelling; settle it.
    control.post("/mutate", json={"action": "completePayment", "paymentId": payment_upstream_id})
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    with ctx.sessions() as session:
        payment = session.scalars(
            select(models.Payment).where(models.Payment.upstream_id == payment_upstream_id)
        ).one()
        # The seed has a payee whose bank returns payments; either way the payment is settled.
        assert payment.status in {"completed", "returned"}
        assert [h.status for h in payment.status_history][-1] == payment.status
        final_event = "payment.completed" if payment.status == "completed" else "payment.failed"
    events = _event_types(ctx)
    assert events["payment.status_updated"] >= 1
    assert events[final_event] >= 1
    assert events["bill.updated"] >= 1
    _assert_documents_match_columns(ctx)


async def test_a_payment_held_in_transit_stays_in_transit_and_is_sent_once(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A hold froze the payment where it was, but it read as `scheduled` (money already gone), and
    # its release emitted `payment.sent` a second time.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        payment = session.scalars(
            select(models.Payment).where(models.Payment.status == "in_transit").order_by(models.Payment.id)
        ).first()
        assert payment is not None, "the seed has payments in transit"
        payment_id, upstream_id = payment.id, payment.upstream_id

    def sent_events(event_type: str = "payment.sent") -> int:
        with ctx.sessions() as session:
            return len(list(session.scalars(select(models.Event.id).where(
                models.Event.object_id == payment_id, models.Event.type == event_type
            ))))  # fmt: skip

    before = sent_events()
    held = control.post("/mutate", json={"action": "holdPayment", "paymentId": upstream_id,
                                         "reason": "Security review"})  # fmt: skip
    assert held.status_code == 200, held.text
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    with ctx.sessions() as session:
        row = session.get(models.Payment, payment_id)
        assert row is not None
        assert (row.status, row.upstream_status_raw, row.hold_reason) == (
            "in_transit",
            "OnHold",
            "Security review",
        )
        assert [h.status for h in row.status_history][-2:] == ["in_transit", "in_transit"]
    assert sent_events("payment.held") == 1 and sent_events("payment.status_updated") == 0  # its own news
    control.post("/mutate", json={"action": "releasePayment", "paymentId": upstream_id}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    with ctx.sessions() as session:
        row = session.get(models.Payment, payment_id)
        assert row is not None
        assert (row.status, row.upstream_status_raw, row.hold_reason) == ("in_transit", "Clearing", None)
    assert sent_events() == before and sent_events("payment.released") == 1
    _assert_documents_match_columns(ctx)


async def test_a_hold_begun_and_ended_between_two_syncs_has_its_events(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Held and released between two reads, the payment looked as before but for its history: only
    # `payment.updated`, and those who follow holds never heard of the review.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    payment = await _new_payment(ctx, control)
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    for action in ("holdPayment", "releasePayment", "holdPayment", "failPayment"):
        reason = {"reason": "Security review"} if action == "holdPayment" else {}
        control.post("/mutate", json={"action": action, "paymentId": payment, **reason}).raise_for_status()
        if action == "releasePayment":
            assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    events = _events_of(ctx, models.Payment, payment)
    assert events[:1] == ["payment.created"]
    # Held and released before the second read; held again and failed (not released) before the third.
    assert [e for e in events if e in ("payment.held", "payment.released", "payment.failed")] == [
        "payment.held", "payment.released", "payment.held", "payment.failed",
    ]  # fmt: skip


def _events_of(ctx: JobContext, model: Any, upstream_id: str) -> list[str]:
    """The types of the events of the stored object with this portal id, in order."""
    with ctx.sessions() as session:
        object_id = session.scalars(select(model.id).where(model.upstream_id == upstream_id)).one()
        return list(session.scalars(
            select(models.Event.type).where(models.Event.object_id == object_id).order_by(models.Event.seq)
        ))  # fmt: skip


async def _new_payment(ctx: JobContext, control: httpx.Client) -> str:
    """A payment made in the portal for an approved bill (approved as needed), by its portal id."""
    bill_upstream_id, _ = _an_approved_bill(ctx)
    created = control.post("/mutate", json={"action": "createPayment", "billId": bill_upstream_id,
                                            "userEmail": CONTROLLER})  # fmt: skip
    assert created.status_code == 200, created.text
    payment_upstream_id: str = created.json()["changed"][0]
    control.post(
        "/mutate", json={"action": "approvePayment", "paymentId": payment_upstream_id, "userEmail": CLERK}
    )
    return payment_upstream_id


async def test_a_payment_first_seen_past_its_start_has_the_events_of_what_it_passed(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Made, sent and settled, or made and failed, between two syncs (or while the gateway was down):
    # it had only `payment.created`, so subscribers to payment.sent / payment.failed never heard of it.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    completed = await _new_payment(ctx, control)
    control.post("/mutate", json={"action": "completePayment", "paymentId": completed}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _events_of(ctx, models.Payment, completed) == [
        "payment.created",
        "payment.sent",
        "payment.completed",
    ]
    failed = await _new_payment(ctx, control)
    control.post(
        "/mutate", json={"action": "holdPayment", "paymentId": failed, "reason": "KYC"}
    ).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _events_of(ctx, models.Payment, failed) == ["payment.created", "payment.held"]
    # A held payment that fails is not released: it never resumes.
    control.post("/mutate", json={"action": "failPayment", "paymentId": failed}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _events_of(ctx, models.Payment, failed) == [
        "payment.created", "payment.held", "payment.updated", "payment.status_updated", "payment.failed",
    ]  # fmt: skip
    # A feed's first listing is history: the seed's completed and failed payments had `created` only.
    assert _event_types(ctx)["payment.completed"] == 1 and _event_types(ctx)["payment.failed"] == 1


async def test_an_unchanged_object_read_again_says_when_it_was_read(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    # `upstream.fetched_at` kept the time of the first read, however often the object was read since.
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        bill = session.scalars(select(models.Bill).order_by(models.Bill.id)).first()
        assert bill is not None
        company = session.get(models.Company, bill.company_id)
        assert company is not None
        first_read, updated_at, events = (
            bill.upstream_fetched_at,
            bill.updated_at,
            _count(session, models.Event),
        )
        bill_id, bill_upstream_id, company_upstream_id = bill.id, bill.upstream_id, company.upstream_id
    portal = await ctx.portals.get(connection_id)
    record = await portal.fetch_object(company_upstream_id, "bill", bill_upstream_id)
    assert record is not None
    with transaction(ctx.sessions) as session:
        later = datetime.now(UTC)
        counts = apply_records(session, connection_id, company_ids(session, connection_id), [record], later)
    assert counts.unchanged == 1 and counts.updated == 0
    with ctx.sessions() as session:
        row = session.get(models.Bill, bill_id)
        assert row is not None and first_read is not None and row.upstream_fetched_at is not None
        assert row.upstream_fetched_at > first_read and row.updated_at == updated_at
        assert (
            json.loads(row.document)["upstream"]["fetched_at"]
            == mapping.to_schema(row).model_dump(mode="json")["upstream"]["fetched_at"]
        )
        assert _count(session, models.Event) == events  # no event: nothing the portal holds changed
    _assert_documents_match_columns(ctx)


async def test_a_read_older_than_the_stored_copy_never_overwrites_it(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A sync page listed before a fresh read (or a write's read-back) and written after it: without
    # the portal's last-modified times to order them, the store went back to the older state and
    # reported a change the portal never made, then the same change again at the next sync.
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    bill_upstream_id, company_upstream_id = _an_approved_bill(ctx)
    created = control.post("/mutate", json={"action": "createPayment", "billId": bill_upstream_id,
                                            "userEmail": CONTROLLER})  # fmt: skip
    payment_upstream_id = created.json()["changed"][0]
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok
    portal = await ctx.portals.get(connection_id)
    earlier = await portal.fetch_object(company_upstream_id, "payment", payment_upstream_id)
    control.post("/mutate", json={"action": "rejectPayment", "paymentId": payment_upstream_id,
                                  "userEmail": CLERK}).raise_for_status()  # fmt: skip
    later = await portal.fetch_object(company_upstream_id, "payment", payment_upstream_id)
    assert earlier is not None and later is not None and earlier.status_raw != later.status_raw

    def apply(record: Any) -> ApplyCounts:
        with transaction(ctx.sessions) as session:
            return apply_records(session, connection_id, company_ids(session, connection_id), [record],
                                 datetime.now(UTC))  # fmt: skip

    assert apply(later).updated == 1
    events = _event_types(ctx)
    stale = apply(earlier)
    assert (stale.updated, stale.unchanged, stale.events) == (0, 1, 0)
    assert _event_types(ctx) == events
    with ctx.sessions() as session:
        payment = session.scalars(
            select(models.Payment).where(models.Payment.upstream_id == payment_upstream_id)
        ).one()
        assert payment.upstream_status_raw == later.status_raw
        assert payment.upstream_modified_at == later.version
    assert apply(later).unchanged == 1  # the same read again changes nothing
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok
    assert _event_types(ctx)["payment.status_updated"] == events["payment.status_updated"]


async def test_two_transactions_applying_one_connections_records_apply_them_one_after_the_other(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Two processes syncing one login (two gateways on one PostgreSQL, or a gateway and `plooto-api
    # sync`) listed the same new bills: both inserted them (a unique violation), or both updated one
    # (its events twice, its line items twice).
    if ctx.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's writers are one at a time already")
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    company_upstream_id = _first_company(ctx)
    made = control.post(
        "/mutate", json={"action": "createBills", "companyId": company_upstream_id, "count": 3}
    )
    portal = await ctx.portals.get(connection_id)
    records = [
        await portal.fetch_object(company_upstream_id, "bill", bill_id) for bill_id in made.json()["changed"]
    ]
    assert all(record is not None for record in records)

    first = ctx.sessions()
    first.begin()
    applied = apply_records(
        first, connection_id, company_ids(first, connection_id), records, datetime.now(UTC)
    )
    assert applied.created == 3
    done: list[ApplyCounts] = []

    def second() -> None:
        with transaction(ctx.sessions) as session:
            done.append(apply_records(session, connection_id, company_ids(session, connection_id), records,
                                      datetime.now(UTC)))  # fmt: skip

    race_behind(ctx.engine, first, second)
    assert done and (done[0].created, done[0].unchanged, done[0].events) == (0, 3, 0)
    with ctx.sessions() as session:
        created = session.scalars(
            select(func.count())
            .select_from(models.Event)
            .where(
                models.Event.type == "bill.created",
                models.Event.object_id.in_(
                    select(models.Bill.id).where(
                        models.Bill.upstream_id.in_([r.upstream_id for r in records if r is not None])
                    )
                ),
            )
        ).one()
        assert created == 3


async def test_one_endpoint_failing_stops_only_its_feed(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A lasting 503 on the reminders endpoint ended the whole run, so the feeds after it (customer
    # payments) were never pulled while it lasted.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        invoice = session.scalars(
            select(models.Invoice)
            .where(models.Invoice.status.in_(["sent", "overdue"]))
            .order_by(models.Invoice.id)
        ).first()
        assert invoice is not None
        invoice_upstream_id = invoice.upstream_id
    control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"/reminders$",
                                  "status": 503}).raise_for_status()  # fmt: skip
    paid = control.post("/mutate", json={"action": "customerPays", "invoiceId": invoice_upstream_id})
    assert paid.status_code == 200, paid.text
    payments_before = _event_types(ctx)["payment.created"]

    partial = await engine.sync_connection(connection_id, cadence="fast")
    assert partial.state == "upstream_unavailable" and partial.error
    again = await engine.sync_connection(connection_id, cadence="fast")  # the same failures: no new event
    assert again.state == "upstream_unavailable"
    assert _event_types(ctx)["connection.upstream_unavailable"] == 1
    assert _event_types(ctx)["payment.created"] == payments_before + 1  # the later feed was pulled
    row = connection_row(ctx, connection_id)
    assert row.state_detail and any(feed.endswith("/reminders") for feed in row.state_detail["feeds"])
    with ctx.sessions() as session:
        errors = list(session.scalars(select(models.SyncCursor.last_error).where(
            models.SyncCursor.object_type == "reminders")))  # fmt: skip
    assert errors and all(error and "503" in error for error in errors)

    control.delete("/faults").raise_for_status()
    healed = await engine.sync_connection(connection_id, cadence="fast")
    assert healed.ok and healed.state == "healthy", healed.error


async def test_one_endpoint_failing_for_every_company_is_one_feed_failing(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Companies sync side by side: /bills failing in three of them counted as three failures in a
    # row, "the portal is down", and the run stopped before invoices and payments were pulled.
    from conftest import SANDBOX_SEED

    control.post("/reset", json={**SANDBOX_SEED, "companies": 4}).raise_for_status()
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        invoice = session.scalars(
            select(models.Invoice)
            .where(models.Invoice.status.in_(["sent", "overdue"]))
            .order_by(models.Invoice.id)
        ).first()
        assert invoice is not None
        invoice_upstream_id = invoice.upstream_id
    control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"/bills$",
                                  "status": 503}).raise_for_status()  # fmt: skip
    # The next feed answers slowly, so that no feed is done between the companies' bills failing.
    control.post("/faults", json={"kind": "latency", "method": "GET", "pathPattern": r"/payments$",
                                  "latencyMs": 2500}).raise_for_status()  # fmt: skip
    paid = control.post("/mutate", json={"action": "customerPays", "invoiceId": invoice_upstream_id})
    assert paid.status_code == 200, paid.text
    payments_before = _event_types(ctx)["payment.created"]

    partial = await engine.sync_connection(connection_id, cadence="fast")
    assert partial.state == "upstream_unavailable"
    assert [feed for _, feed, _ in partial.failed_feeds] == ["bills"] * 4, partial.failed_feeds
    assert _event_types(ctx)["payment.created"] == payments_before + 1  # the later feeds were pulled
    row = connection_row(ctx, connection_id)
    assert row.state_detail and len(row.state_detail["feeds"]) == 4
    # A run of the other cadence lists no bills: it proves nothing about them. It marked the
    # connection healthy while the outage lasted (connection.repaired, then upstream_unavailable
    # again at the next fast run), and a run reaching some companies' bills named only those.
    control.delete("/faults").raise_for_status()
    control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"/bills$",
                                  "status": 503}).raise_for_status()  # fmt: skip
    slow = await engine.sync_connection(connection_id, cadence="slow")
    assert slow.state == "upstream_unavailable", slow
    assert connection_row(ctx, connection_id).state_detail == row.state_detail
    again = await engine.sync_connection(connection_id, cadence="fast")
    assert again.state == "upstream_unavailable"
    events = _event_types(ctx)
    assert (events["connection.upstream_unavailable"], events["connection.repaired"]) == (1, 0)
    control.delete("/faults").raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="slow")).state == "upstream_unavailable"
    healed = await engine.sync_connection(connection_id, cadence="fast")
    assert healed.ok and healed.state == "healthy" and _event_types(ctx)["connection.repaired"] == 1


async def test_two_processes_ending_one_sync_record_its_state_change_once(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    # Two processes finishing a first sync together (two `plooto-api sync`, or a gateway and one)
    # both read `syncing` and both recorded syncing -> healthy, with two connection.healthy events.
    if ctx.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's writers are one at a time already")
    connection_id = make_connection()
    with transaction(ctx.sessions) as session:
        change_state(session, session.get_one(models.Connection, connection_id), "syncing")
        recorded = _count(session, models.ConnectionStateChange, to_state="healthy")
        healthy = _event_types(ctx)["connection.healthy"]
    first = ctx.sessions()
    first.begin()
    assert change_state(first, first.get_one(models.Connection, connection_id), "healthy")
    changed: list[bool] = []

    def second() -> None:
        with transaction(ctx.sessions) as session:
            connection = session.get_one(models.Connection, connection_id)
            changed.append(change_state(session, connection, "healthy"))

    race_behind(ctx.engine, first, second)
    assert changed == [False]
    assert _event_types(ctx)["connection.healthy"] == healthy + 1
    with ctx.sessions() as session:
        assert _count(session, models.ConnectionStateChange, to_state="healthy") == recorded + 1


async def test_a_session_lost_again_after_signing_in_stops_only_its_feed(
    ctx: JobContext,
    make_connection: Callable[..., str],
    control: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The portal dropping the session twice in a row (once more right after the gateway signed in
    # again) stopped the whole run after the bills: no payments, invoices or later feeds pulled.
    # (One company and one lane at a time: they share the session, so one's loss may be another's.)
    monkeypatch.setattr(sync_engine, "COMPANY_CONCURRENCY", 1)
    monkeypatch.setattr(sync_engine, "_lanes", lambda feeds: (feeds, []))
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    bill_upstream_id, company = _an_approved_bill(ctx)
    control.post("/mutate", json={"action": "createPayment", "billId": bill_upstream_id,
                                  "userEmail": CONTROLLER}).raise_for_status()  # fmt: skip
    control.post("/faults", json={"kind": "revoke_session", "pathPattern": f"/companies/{company}/bills",
                                  "count": 2}).raise_for_status()  # fmt: skip
    payments_before = _event_types(ctx)["payment.created"]
    report = await engine.sync_connection(connection_id, cadence="fast")
    assert [(c, f) for c, f, _ in report.failed_feeds] == [(company, "bills")], report.failed_feeds
    assert f"{company}/payments" in report.pulled_feeds and f"{company}/invoices" in report.pulled_feeds
    assert _event_types(ctx)["payment.created"] == payments_before + 1
    row = connection_row(ctx, connection_id)
    assert row.state == "upstream_unavailable" and row.state_detail["feeds"] == [f"{company}/bills"]
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok  # and the next run mends it
    assert connection_row(ctx, connection_id).state == "healthy"


async def test_a_portal_down_for_every_feed_stops_the_run_early(
    ctx: JobContext,
    make_connection: Callable[..., str],
    control: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    # One company at a time: a company waiting for its turn when the run stops starts no feed (a
    # firm with 200 client books sent a request or five per book to a portal that was down).
    monkeypatch.setattr(sync_engine, "COMPANY_CONCURRENCY", 1)
    control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"^/api/companies/",
                                  "status": 503}).raise_for_status()  # fmt: skip
    down = await engine.sync_connection(connection_id, cadence="fast")
    assert down.state == "upstream_unavailable"
    # The other lane's feed in flight when the run stopped may fail too; no feed starts after.
    assert (
        sync_engine.FEED_FAILURES_TO_STOP <= len(down.failed_feeds) <= sync_engine.FEED_FAILURES_TO_STOP + 1
    )
    assert len({company for company, _, _ in down.failed_feeds}) == 1  # the company waiting started none


def _assert_documents_match_columns(ctx: JobContext) -> None:
    """Reads serve each row's stored JSON document; it must be exactly what its columns say."""
    checked = 0
    with ctx.sessions() as session:
        for spec in mapping.OBJECT_MAPS.values():
            for row in session.scalars(select(spec.model)):
                assert row.document is not None, (spec.object_type, row.id)
                assert json.loads(row.document) == mapping.to_schema(row).model_dump(mode="json"), row.id
                checked += 1
    assert checked > 100


async def test_sms_login_waits_for_a_code_then_recovers_and_survives_restart(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, settings: Any
) -> None:
    connection_id = make_connection(username=CLERK, totp_secret=None)
    engine = SyncEngine(ctx)
    blocked = await engine.sync_connection(connection_id)
    assert blocked.state == "requires_action"
    row = connection_row(ctx, connection_id)
    assert (row.state, row.state_reason) == ("requires_action", "mfa")
    assert _event_types(ctx)["connection.requires_action"] == 1
    again = await engine.sync_connection(connection_id)  # waits for the code; sends no new SMS
    assert again.state == "requires_action" and "MFA code" in (again.error or "")
    code = [m for m in control.get("/outbox").json() if m["kind"] == "Sms"][-1]["code"]
    await complete_mfa(ctx, connection_id, code, trust_device=True)
    recovered = await engine.sync_connection(connection_id)
    assert recovered.ok and recovered.state == "healthy"
    assert _event_types(ctx)["connection.repaired"] == 1
    sms_before = len([m for m in control.get("/outbox").json() if m["kind"] == "Sms"])
    # A restart: a new worker context, same store and vault key. No new MFA is asked for.
    restarted = JobContext.from_settings(settings, migrate=False)
    try:
        after = await SyncEngine(restarted).sync_connection(connection_id, cadence="fast")
        assert after.ok and after.state == "healthy"
    finally:
        await restarted.aclose()
    assert len([m for m in control.get("/outbox").json() if m["kind"] == "Sms"]) == sms_before


async def test_the_cli_says_when_a_code_came_for_an_expired_sign_in(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, settings: Any
) -> None:
    connection_id = make_connection(username=CLERK, totp_secret=None)
    assert (await SyncEngine(ctx).sync_connection(connection_id)).state == "requires_action"
    sms = [m for m in control.get("/outbox").json() if m["kind"] == "Sms"]
    control.post("/clock", json={"advance_hours": 1}).raise_for_status()  # the pending sign-in expires
    console = Console(file=io.StringIO())

    def sync(code: str) -> int:
        return run_sync(settings, console, connection_id=connection_id, cadence="all", mfa_code=code)

    with pytest.raises(CliError, match="started again and the portal sent a new sms code"):
        await asyncio.to_thread(sync, sms[-1]["code"])
    sent = [m for m in control.get("/outbox").json() if m["kind"] == "Sms"]
    assert len(sent) == len(sms) + 1
    assert await asyncio.to_thread(sync, sent[-1]["code"]) == 0
    assert connection_row(ctx, connection_id).state == "healthy"


async def test_cli_connect_with_an_sms_login_leaves_the_connection_waiting_for_the_code(
    ctx: JobContext, control: httpx.Client, settings: Any
) -> None:
    """`plooto-api connect` where nobody can type the code: it says how to give it later, and the
    connection waits for it in requires_action at once (listed so, with its event), not healthy until
    a sync found out. The next sync waits for that code (no second SMS); `sync --mfa-code` gives it."""
    console = Console(file=io.StringIO())
    sms_before = len([m for m in control.get("/outbox").json() if m["kind"] == "Sms"])

    def connect() -> None:
        run_connect(settings, console, username=CLERK, password=PASSWORD, totp_secret=None, label=None,
                    browser=False, sync_now=True)  # fmt: skip

    with pytest.raises(CliError, match="the portal asks for an SMS code; run `plooto-api sync --connection"):
        await asyncio.to_thread(connect)
    with ctx.sessions() as session:
        row = session.scalars(select(models.Connection).where(models.Connection.username == CLERK)).one()
        waiting_for = (row.state, row.state_reason, row.state_detail)
    assert waiting_for == ("requires_action", "mfa", {"method": "sms"})
    assert _event_types(ctx)["connection.requires_action"] == 1
    waiting = await SyncEngine(ctx).sync_connection(row.id)  # as the scheduler's next run
    assert waiting.state == "requires_action" and "MFA code" in (waiting.error or "")
    sent = [m for m in control.get("/outbox").json() if m["kind"] == "Sms"]
    assert len(sent) == sms_before + 1  # one code, still the one to give
    code = sent[-1]["code"]
    assert await asyncio.to_thread(run_sync, settings, console, connection_id=row.id, cadence="fast",
                                   mfa_code=code) == 0  # fmt: skip
    assert connection_row(ctx, row.id).state == "healthy"


async def test_cli_connect_keeps_nothing_of_a_refused_login_and_one_connection_per_login(
    ctx: JobContext, settings: Any
) -> None:
    console = Console(file=io.StringIO())

    def connect(password: str, label: str | None = None) -> None:
        run_connect(settings, console, username=CONTROLLER, password=password, totp_secret=TOTP_SECRET,
                    label=label, browser=False, sync_now=False)  # fmt: skip

    def rows() -> list[tuple[str, str]]:
        with ctx.sessions() as session:
            return [(c.id, c.state) for c in session.scalars(select(models.Connection))]

    with pytest.raises(CliError) as refused:  # one line, as the portal put it; not a traceback
        await asyncio.to_thread(connect, "not-" + PASSWORD)
    assert str(refused.value) == f"{CONTROLLER} could not log in: the portal refused the username or password"
    assert rows() == []
    with ctx.sessions() as session:
        assert session.scalar(select(func.count()).select_from(models.VaultEntry)) == 0
    await asyncio.to_thread(connect, PASSWORD)
    await asyncio.to_thread(connect, PASSWORD)  # the same login again: the same connection
    assert [state for _, state in rows()] == ["healthy"]
    assert "(already there)" in console.file.getvalue()  # type: ignore[attr-defined]
    # A refused password for a login already there changes nothing of it: not its label, not its
    # stored password (the next sync still logs in).
    with pytest.raises(CliError, match="refused the username or password"):
        await asyncio.to_thread(connect, "not-" + PASSWORD, "renamed")
    [(connection_id, state)] = rows()
    assert state == "healthy" and connection_row(ctx, connection_id).label is None
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok


async def test_two_processes_signing_in_one_new_login_at_once_share_one_connection(
    ctx: JobContext, sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ctx.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's write transactions begin IMMEDIATE: a look and its insert cannot interleave")
    winner: list[str] = []

    def create_after_another_process(session: Session, *args: Any, **kwargs: Any) -> models.Connection:
        # Another process (an API replica) creates the same login's connection between this
        # process's look and its insert.
        if not winner:
            with transaction(ctx.sessions) as other:
                winner.append(real_create(other, *args, **kwargs).id)
        return real_create(session, *args, **kwargs)

    real_create = authentication.create_connection
    monkeypatch.setattr(authentication, "create_connection", create_after_another_process)
    signed_in = await authentication.sign_in(ctx, username=CONTROLLER, password=PASSWORD, upstream_url=sandbox,
                                             totp_secret=TOTP_SECRET)  # fmt: skip
    assert (signed_in.connection_id, signed_in.created) == (winner[0], False)
    with ctx.sessions() as session:
        assert list(session.scalars(select(models.Connection.id))) == winner


async def test_a_login_refused_with_its_stored_password_waits_for_a_new_one(
    ctx: JobContext, make_connection: Callable[..., str], settings: Any
) -> None:
    """The portal refusing the very password the connection holds (changed in the portal): the
    connection waits for a new one at once, and no sync tries the refused one again."""
    connection_id = make_connection(password="changed-" + PASSWORD)

    def connect() -> None:
        run_connect(settings, Console(file=io.StringIO()), username=CONTROLLER, password="changed-" + PASSWORD,
                    totp_secret=TOTP_SECRET, label=None, browser=False, sync_now=False)  # fmt: skip

    with pytest.raises(CliError, match="refused the username or password"):
        await asyncio.to_thread(connect)
    row = connection_row(ctx, connection_id)
    assert (row.state, row.state_reason) == ("requires_action", "password")
    waiting = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert waiting.error == "not syncing: waiting for a new password (the last one was refused)"


async def test_progress_counts_each_object_once_against_the_feeds_whole_size(
    ctx: JobContext, make_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of 7: each query after the first starts at the last record's instant (which it lists
    # again) and the portal's count covers only what that query matches.
    monkeypatch.setattr(sync_engine, "PAGE_SIZE", 7)
    calls: dict[str, list[tuple[int, int | None]]] = {}

    def record(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "bills":
            calls.setdefault(company, []).append((done, total))

    assert (await SyncEngine(ctx).sync_connection(make_connection(), progress=record)).ok
    assert len(calls) == COMPANIES
    for steps in calls.values():
        assert len(steps) >= BILLS_PER_COMPANY // 7
        assert [total for _, total in steps] == [BILLS_PER_COMPANY] * len(steps)
        assert [done for done, _ in steps] == sorted(done for done, _ in steps)
        assert steps[-1] == (BILLS_PER_COMPANY, BILLS_PER_COMPANY)


async def test_a_first_sync_stopped_from_outside_does_not_leave_the_connection_syncing(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    # Ctrl-C in `plooto-api connect`, or a shutdown during serve's first sync: `syncing` stood,
    # with nothing running, until another sync finished.
    connection_id = make_connection()
    before = connection_row(ctx, connection_id).state
    seen: list[str] = []

    def stop_at_the_first_page(company: str, feed: str, done: int, total: int | None) -> None:
        seen.append(connection_row(ctx, connection_id).state)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()

    run = asyncio.ensure_future(
        SyncEngine(ctx).sync_connection(connection_id, progress=stop_at_the_first_page)
    )
    with pytest.raises(asyncio.CancelledError):
        await run
    assert seen[:1] == ["syncing"]
    assert connection_row(ctx, connection_id).state == before
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok, "the next run resumes"


async def test_the_cli_shows_a_feed_with_nothing_to_pull_as_done_not_unknown(
    ctx: JobContext, make_connection: Callable[..., str], settings: Any
) -> None:
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert (
        await asyncio.to_thread(
            lambda: run_sync(settings, console, connection_id=connection_id, cadence="fast", mfa_code=None)
        )
        == 0
    )
    shown = out.getvalue()
    assert "customer_payments" in shown and "/?" not in shown, shown


def _assert_plans_name_their_invoices(ctx: JobContext) -> None:
    """Recurring plans are listed before invoices (which refer to them) and name the invoices they
    made: once the invoices are in, every plan names each of them by its gateway id."""
    with ctx.sessions() as session:
        invoice_ids = set(session.scalars(select(models.Invoice.id)))
        plans = [json.loads(d) for d in session.scalars(select(models.RecurringInvoice.document))]
        named = [i for plan in plans for i in plan["template"]["invoice_ids"]]
        assert named and set(named) <= invoice_ids
        assert not any((c.page_state or {}).get("relist") for c in session.scalars(select(models.SyncCursor)))


async def test_a_sync_stopped_before_plans_are_listed_again_lists_them_on_its_next_run(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    connection_id = make_connection()

    def stop_after_invoices(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "invoices":
            raise SimulatedCrash("the worker died here")

    with pytest.raises(SimulatedCrash):
        await SyncEngine(ctx).sync_connection(connection_id, progress=stop_after_invoices)
    with ctx.sessions() as session:
        plans = [json.loads(d) for d in session.scalars(select(models.RecurringInvoice.document))]
        # Their invoices came later: not resolved yet, and left out (a list of ids holds no nulls).
        assert plans and all(plan["template"]["invoice_ids"] == [] for plan in plans)
        marked = session.scalars(
            select(models.SyncCursor).where(models.SyncCursor.object_type == "recurring_invoices")
        )
        assert all(c.page_state["relist"] for c in marked)
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok
    _assert_plans_name_their_invoices(ctx)


async def test_a_plan_issuing_an_invoice_between_syncs_is_updated_once_with_it(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        plans = {
            plan.id: json.loads(plan.document) for plan in session.scalars(select(models.RecurringInvoice))
        }
    due = [p for p in plans.values() if p["status"] == "active" and p["next_issue_date"]]
    assert due
    issue = min(date.fromisoformat(p["next_issue_date"]) for p in due)
    now = datetime.fromisoformat(control.get("/clock").json()["now"])
    control.post("/clock", json={"advance_days": (issue - now.date()).days + 1}).raise_for_status()
    # A run of every feed lists the plans before the invoices they issued: the plan's change waits
    # for them, and is one update naming the new invoice, not one without it and one with it. Should
    # the run stop before the invoices, the change is not lost: the next run lists the plans again.

    def stop_at_invoices(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "invoices":
            raise SimulatedCrash("the worker died here")

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, progress=stop_at_invoices)
    assert _event_types(ctx)["recurring_invoice.updated"] == 0
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        updates = session.execute(
            select(models.Event.object_id, models.Event.data).where(
                models.Event.type == "recurring_invoice.updated"
            )
        ).all()
        invoice_ids = set(session.scalars(select(models.Invoice.id)))
    by_plan = Counter(object_id for object_id, _ in updates)
    issued = [object_id for object_id, data in updates
              if len(data["template"]["invoice_ids"]) > len(plans[object_id]["template"]["invoice_ids"])]  # fmt: skip
    assert issued, updates
    assert all(by_plan[plan_id] == 1 for plan_id in issued), by_plan
    for _, data in updates:
        assert set(data["template"]["invoice_ids"]) <= invoice_ids
    _assert_plans_name_their_invoices(ctx)


async def test_crash_mid_sync_resumes_without_loss_or_doubles(
    ctx: JobContext, make_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_engine, "PAGE_SIZE", 7)
    connection_id = make_connection()
    pages = 0

    def crash_after_three_bill_pages(company: str, feed: str, done: int, total: int | None) -> None:
        nonlocal pages
        if feed == "bills":
            pages += 1
            if pages == 3:
                raise SimulatedCrash("the worker died here")

    with pytest.raises(SimulatedCrash):
        await SyncEngine(ctx).sync_connection(connection_id, progress=crash_after_three_bill_pages)
    with ctx.sessions() as session:
        partial = _count(session, models.Bill)
        assert 0 < partial < COMPANIES * BILLS_PER_COMPANY
        bill_cursors = session.scalars(
            select(models.SyncCursor).where(models.SyncCursor.object_type == "bills")
        ).all()
        assert any(c.page_state and c.page_state["in_progress"] for c in bill_cursors)  # the crashed one
    report = await SyncEngine(ctx).sync_connection(connection_id)
    assert report.ok
    with ctx.sessions() as session:
        assert _count(session, models.Bill) == COMPANIES * BILLS_PER_COMPANY
    assert _event_types(ctx)["bill.created"] == COMPANIES * BILLS_PER_COMPANY


async def test_drift_marks_the_connection_and_spares_other_types(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    control.post("/faults", json={"kind": "shape_change", "objectType": "bill", "fromField": "totalAmount",
                                  "toField": "grandTotal"}).raise_for_status()  # fmt: skip
    report = await SyncEngine(ctx).sync_connection(connection_id)
    assert report.drift and any("totalAmount" in d for d in report.drift)
    row = connection_row(ctx, connection_id)
    assert row.state == "upstream_changed"
    assert row.state_detail and row.state_detail["differences"]
    differences = row.state_detail["differences"]
    assert len(differences) == len(set(differences))  # once, though every company's bills differ
    # The feeds it stopped are named, each company's, and their cursors say why they stand: the
    # payments too, whose bills could not be read.
    stopped = row.state_detail["feeds"]
    assert len(stopped) == 4 and {name.split("/")[1] for name in stopped} == {"bills", "payments"}
    with ctx.sessions() as session:
        errors = session.scalars(
            select(models.SyncCursor.last_error).where(models.SyncCursor.object_type == "bills")
        ).all()
    assert len(errors) == 2 and all(error and "totalAmount" in error for error in errors)
    assert _event_types(ctx)["connection.upstream_changed"] == 1
    with ctx.sessions() as session:
        assert _count(session, models.Bill) == 0
        assert _count(session, models.Vendor) > 0 and _count(session, models.Invoice) > 0
    control.delete("/faults").raise_for_status()
    healed = await SyncEngine(ctx).sync_connection(connection_id)
    assert healed.ok
    assert connection_row(ctx, connection_id).state == "upstream_changed"  # until an operator clears it


async def test_drift_in_the_companies_listing_is_drift_not_an_outage(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # The companies are listed before any feed: a difference there had stopped the run as
    # `upstream_unavailable`, with no differences kept and writes still allowed.
    from plooto_api.services.connections import uncleared_drift

    connection_id = make_connection()
    control.post("/faults", json={"kind": "shape_change", "objectType": "company", "fromField": "baseCurrency",
                                  "toField": "currencyCode"}).raise_for_status()  # fmt: skip
    report = await SyncEngine(ctx).sync_connection(connection_id)
    assert report.state == "upstream_changed" and any("baseCurrency" in d for d in report.drift), report
    row = connection_row(ctx, connection_id)
    assert row.state == "upstream_changed" and "baseCurrency" in " ".join(uncleared_drift(row) or [])
    assert connection_events(ctx, connection_id)[-1] == "connection.upstream_changed"
    control.delete("/faults").raise_for_status()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    assert connection_row(ctx, connection_id).state == "upstream_changed"  # until an operator clears it


async def test_a_company_page_without_its_wallets_is_drift_not_their_deletion(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # The wallets' field, optional in the companies' listing, was optional on the company's own page
    # too: renamed there, every wallet was confirmed gone (bank_account.deleted, webhooks) and the
    # connection stayed healthy.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        wallets = _count(session, models.BankAccount, kind="instant_wallet")
    assert wallets > 0
    control.post("/faults", json={"kind": "shape_change", "objectType": "company",
                                  "fromField": "plootoInstantBalances", "toField": "instantBalances"},
                 ).raise_for_status()  # fmt: skip
    report = await engine.sync_connection(connection_id)
    assert report.state == "upstream_changed" and any("plootoInstantBalances" in d for d in report.drift)
    with ctx.sessions() as session:
        assert _count(session, models.BankAccount, kind="instant_wallet", deleted_at=None) == wallets
    assert _event_types(ctx)["bank_account.deleted"] == 0


async def test_drift_outlasts_a_login_problem_found_after_it(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, sandbox: str
) -> None:
    # Drift is cleared by an operator only. A lockout found by a later sync took the connection's
    # state, and the next good sync then made it healthy: writes allowed, no one having cleared it.
    from plooto_api.services.connections import uncleared_drift

    connection_id = make_connection()
    engine = SyncEngine(ctx)
    control.post("/faults", json={"kind": "shape_change", "objectType": "bill", "fromField": "totalAmount",
                                  "toField": "grandTotal"}).raise_for_status()  # fmt: skip
    assert (await engine.sync_connection(connection_id)).drift
    await lock_login_from_elsewhere(sandbox, control, CONTROLLER)  # someone else's bad passwords
    locked = await engine.sync_connection(connection_id, cadence="fast")
    assert locked.state == "locked", locked.error
    row = connection_row(ctx, connection_id)
    assert (
        row.state == "locked"
        and uncleared_drift(row)
        and "totalAmount" in " ".join(uncleared_drift(row) or [])
    )
    control.post("/clock", json={"advance_minutes": 20}).raise_for_status()  # the lock ends
    control.delete("/faults").raise_for_status()
    back = await engine.sync_connection(connection_id, cadence="fast")
    assert back.state == "upstream_changed", back.error  # not healthy: no operator cleared it
    assert (
        row.state_detail
        and row.state_detail["drift"] == connection_row(ctx, connection_id).state_detail["differences"]
    )


async def test_drift_outlasts_a_code_answered_after_it_and_adds_up_with_later_differences(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Answering the portal's code made the connection healthy: the drift gone with no operator, and
    # writes allowed again. And drift found again replaced what was recorded, emitting each time.
    from plooto_api.services.connections import mark_upstream_changed, uncleared_drift

    connection_id = make_connection(username=CLERK, totp_secret=None)
    engine = SyncEngine(ctx)

    async def answer_the_code() -> None:
        code = [m for m in control.get("/outbox").json() if m["kind"] == "Sms"][-1]["code"]
        await complete_mfa(ctx, connection_id, code, trust_device=True)

    assert (await engine.sync_connection(connection_id)).state == "requires_action"
    await answer_the_code()
    control.post("/faults", json={"kind": "shape_change", "objectType": "bill", "fromField": "totalAmount",
                                  "toField": "grandTotal"}).raise_for_status()  # fmt: skip
    assert (await engine.sync_connection(connection_id)).drift
    stopped = connection_row(ctx, connection_id).state_detail["feeds"]
    # Another type's difference, found by a fresh read: added, the bills' kept with their feeds.
    mark_upstream_changed(ctx.sessions, connection_id, ["vendor: missing field 'displayName'"])
    row = connection_row(ctx, connection_id)
    assert row.state_detail["feeds"] == stopped
    assert any("totalAmount" in d for d in row.state_detail["differences"])
    assert "vendor: missing field 'displayName'" in row.state_detail["differences"]
    # The same differences found again are no news.
    assert (await engine.sync_connection(connection_id, cadence="fast")).drift
    assert connection_row(ctx, connection_id).state_detail == row.state_detail
    assert _event_types(ctx)["connection.upstream_changed"] == 2
    control.delete("/faults").raise_for_status()
    control.post(
        "/faults", json={"kind": "mfa_rechallenge", "pathPattern": "/api/", "count": 8}
    ).raise_for_status()
    waiting = await engine.sync_connection(connection_id, cadence="fast")
    assert waiting.state == "requires_action", waiting.error
    control.delete("/faults").raise_for_status()
    await answer_the_code()
    row = connection_row(ctx, connection_id)
    assert row.state == "upstream_changed"  # not healthy: no operator cleared it
    assert uncleared_drift(row) and "vendor: missing field 'displayName'" in row.state_detail["differences"]
    assert (await engine.sync_connection(connection_id, cadence="fast")).state == "upstream_changed"


async def test_session_expiry_between_syncs_is_transparent(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        bills_before = _count(session, models.Bill)
    control.post("/clock", json={"advance_hours": 1}).raise_for_status()  # past the 15-minute idle timeout
    control.post("/mutate", json={"action": "createBills", "companyId": _first_company(ctx), "count": 2})
    portal = await ctx.portals.get(connection_id)
    logins_before = portal.stats.logins
    report = await engine.sync_connection(connection_id, cadence="fast")
    assert report.ok, report.error
    assert portal.stats.logins == logins_before + 1  # one transparent re-login
    with ctx.sessions() as session:
        assert _count(session, models.Bill) == bills_before + 2
    assert connection_row(ctx, connection_id).state == "healthy"


async def test_wrong_password_needs_action_and_is_not_retried(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    connection_id = make_connection(password="wrong-" + PASSWORD)
    for _ in range(6):  # the portal locks a login after 5 failures; the gateway must try only once
        report = await SyncEngine(ctx).sync_connection(connection_id)
        assert report.state == "requires_action"
    row = connection_row(ctx, connection_id)
    assert row.state_reason == "password"
    with ctx.sessions() as session:
        changes = session.scalars(select(models.ConnectionStateChange.to_state)).all()
    assert changes.count("requires_action") == 1
    await replace_credentials(ctx, connection_id, password=PASSWORD)
    fixed = await SyncEngine(ctx).sync_connection(connection_id)
    assert fixed.ok, fixed.error  # not locked: the portal saw one failed attempt, not six
    assert _event_types(ctx)["connection.repaired"] >= 1


def _first_company(ctx: JobContext) -> str:
    with ctx.sessions() as session:
        company = session.scalars(select(models.Company).order_by(models.Company.name)).first()
        assert company is not None
        return company.upstream_id


async def test_a_wrong_totp_secret_needs_action_and_is_not_retried(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    connection_id = make_connection(
        totp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    )  # valid, but not this user's
    first = await SyncEngine(ctx).sync_connection(connection_id)
    assert first.state == "requires_action"
    row = connection_row(ctx, connection_id)
    assert (row.state_reason, (row.state_detail or {}).get("error")) == ("mfa", "code_refused")
    portal = await ctx.portals.get(connection_id)
    logins = portal.stats.logins
    again = await SyncEngine(ctx).sync_connection(connection_id)
    assert again.state == "requires_action" and portal.stats.logins == logins  # no new attempt


async def test_throttle_settings_bound_every_connection_and_what_it_learned(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    """PLOOTO_API_UPSTREAM_* settings reach each connection's throttle; on restart the learned rate
    is resumed, within a lowered ceiling, rather than the configured start."""
    connection_id = make_connection()
    limits = {"upstream_initial_rate": 3.0, "upstream_max_rate": 4.0, "upstream_max_concurrency": 2}
    first = JobContext.from_settings(ctx.settings.model_copy(update=limits), migrate=False)
    try:
        portal = await first.portals.get(connection_id)
        assert (portal.throttle.rate, portal.throttle_config.max_rate) == (3.0, 4.0)
        assert portal.throttle_config.max_concurrency == 2
        assert await portal.list_companies()
    finally:
        await first.aclose()  # saves the session, with what the throttle learned (3 req/s)
    lowered = {**limits, "upstream_initial_rate": 1.0, "upstream_max_rate": 2.5}
    restarted = JobContext.from_settings(ctx.settings.model_copy(update=lowered), migrate=False)
    try:
        portal = await restarted.portals.get(connection_id)
        assert await portal.list_companies()  # restores the saved session
        assert portal.throttle.rate == 2.5
    finally:
        await restarted.aclose()


async def _portal_reminders(
    ctx: JobContext, connection_id: str, invoice: models.Invoice
) -> list[dict[str, Any]]:
    with ctx.sessions() as session:
        company = session.get(models.Company, invoice.company_id)
        assert company is not None
    portal = await ctx.portals.get(connection_id)
    return await portal.list_reminders(company.upstream_id, invoice.upstream_id)


def _stored_reminders(ctx: JobContext, upstream_id: str) -> list[dict[str, Any]]:
    with ctx.sessions() as session:
        invoice = session.scalars(
            select(models.Invoice).where(models.Invoice.upstream_id == upstream_id)
        ).one()
        served = json.loads(invoice.document)["reminders"]
        assert served == mapping.to_schema(invoice).model_dump(mode="json")["reminders"]
        return list(served)


async def test_invoice_reminders_are_synced_and_a_sent_reminder_is_an_event(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        invoices = session.scalars(select(models.Invoice).order_by(models.Invoice.id)).all()
    statuses: Counter[str] = Counter()
    for invoice in invoices:  # the schedule and the sent log, as the portal lists them per invoice
        portal = await _portal_reminders(ctx, connection_id, invoice)
        stored = _stored_reminders(ctx, invoice.upstream_id)
        assert sorted(r["upstream_id"] for r in stored) == sorted(r["reminderId"] for r in portal)
        by_id = {r["reminderId"]: r for r in portal}
        for reminder in stored:
            assert reminder["status"] == by_id[reminder["upstream_id"]]["status"].lower()
            statuses[reminder["status"]] += 1
    assert statuses["sent"] > 0 and statuses["scheduled"] > 0, statuses
    assert "invoice.reminder_sent" not in _event_types(ctx)  # reminders sent before the first sync

    # The next scheduled reminder of an open invoice goes out: the next fast sync shows it as sent.
    with ctx.sessions() as session:
        scheduled = [
            (reminder.scheduled_for, reminder.upstream_id, invoice.upstream_id)
            for invoice in session.scalars(
                select(models.Invoice).where(models.Invoice.status.in_(["sent", "viewed"]))
            )
            for reminder in invoice.reminders
            if reminder.status == "scheduled" and reminder.scheduled_for is not None
        ]
    when, reminder_id, invoice_upstream_id = min(scheduled)
    # Far enough that some invoice has more than one reminder go out before the next sync: one
    # event each (several sent between two syncs had one event between them).
    after = datetime.combine(when + timedelta(days=8), time(0), tzinfo=UTC)  # reminders go at 09:00 Toronto
    sent_before = _sent_reminders(ctx)
    control.post("/clock", json={"set": after.isoformat()}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    sent = {r["upstream_id"]: r for r in _stored_reminders(ctx, invoice_upstream_id)}[reminder_id]
    assert sent["status"] == "sent" and sent["sent_at"] is not None
    newly_sent = Counter(invoice for invoice, _ in _sent_reminders(ctx) - sent_before)
    assert max(newly_sent.values()) > 1, newly_sent
    assert _event_types(ctx)["invoice.reminder_sent"] == sum(newly_sent.values())
    with ctx.sessions() as session:
        gateway_id = session.scalars(
            select(models.Invoice.id).where(models.Invoice.upstream_id == invoice_upstream_id)
        ).one()
        kinds = set(session.scalars(select(models.Event.type).where(models.Event.object_id == gateway_id)))
    assert {"invoice.updated", "invoice.reminder_sent"} <= kinds
    _assert_documents_match_columns(ctx)


def _sent_reminders(ctx: JobContext) -> set[tuple[str, str]]:
    """(invoice id, reminder portal id) of every reminder the store holds as sent."""
    with ctx.sessions() as session:
        return {
            (invoice.id, reminder.upstream_id)
            for invoice in session.scalars(select(models.Invoice))
            for reminder in invoice.reminders
            if reminder.status == "sent"
        }


def _first_invoice_with_reminders(session: Session) -> models.Invoice:
    invoice = session.scalars(
        select(models.Invoice).where(models.Invoice.reminders.any()).order_by(models.Invoice.id)
    ).first()
    assert invoice is not None
    return invoice


async def _sync_reminders_again(ctx: JobContext, connection_id: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fast sync of the reminders feed alone, listing every reminder again (its cursors dropped)."""
    with ctx.sessions() as session, session.begin():
        for cursor in session.scalars(
            select(models.SyncCursor).where(models.SyncCursor.object_type == "reminders")
        ):
            session.delete(cursor)
    reminders_feed = [feed for feed in sync_engine.FEEDS if feed.name == "reminders"]
    monkeypatch.setattr(sync_engine, "feeds_for", lambda cadence: reminders_feed)
    report = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert report.ok, report.error
    return report


async def test_reminders_of_an_invoice_the_store_lacks_bring_the_invoice(
    ctx: JobContext, make_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    # As if the invoice had been made after its feed was listed: only the reminders feed lists it now.
    with ctx.sessions() as session, session.begin():
        invoice = _first_invoice_with_reminders(session)
        upstream_id, expected = invoice.upstream_id, len(invoice.reminders)
        session.delete(invoice)
    report = await _sync_reminders_again(ctx, connection_id, monkeypatch)
    assert report.counts.by_type["invoice"] >= 1
    assert len(_stored_reminders(ctx, upstream_id)) == expected


async def test_an_object_the_portal_no_longer_lists_is_deleted_only_when_it_confirms_so(
    ctx: JobContext,
    make_connection: Callable[..., str],
    control: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    # A user the store mirrors and the portal no longer has (removed from the company since).
    with ctx.sessions() as session, session.begin():
        user = mapping.to_schema(
            session.scalars(select(models.PortalUser).order_by(models.PortalUser.id)).first()
        )
        company_upstream_id = user.upstream_id.split("@")[1]
        gone = user.model_copy(update={"id": "usr_gone", "upstream_id": f"U-gone@{company_upstream_id}"})
        session.add(mapping.new_row(gone, connection_id=connection_id))
    users_feed = [feed for feed in sync_engine.FEEDS if feed.name == "users"]
    monkeypatch.setattr(sync_engine, "feeds_for", lambda cadence: users_feed)

    # The portal failing to answer is not an answer: nothing is deleted.
    control.post("/faults", json={"kind": "error", "status": 503, "pathPattern": "/users"}).raise_for_status()
    failed = await engine.sync_connection(connection_id, cadence="slow")
    assert failed.state == "upstream_unavailable"
    control.delete("/faults").raise_for_status()
    with ctx.sessions() as session:
        assert _count(session, models.PortalUser, deleted_at=None) == _count(session, models.PortalUser)
    assert "user.deleted" not in _event_types(ctx)

    # Listed whole again, without it, and its own lookup confirms it gone: deleted, once.
    assert (await engine.sync_connection(connection_id, cadence="slow")).ok
    assert (await engine.sync_connection(connection_id, cadence="slow")).ok
    with ctx.sessions() as session:
        deleted = session.scalars(
            select(models.PortalUser).where(models.PortalUser.deleted_at.is_not(None))
        ).all()
        assert [row.id for row in deleted] == ["usr_gone"]
        assert json.loads(deleted[0].document)["deleted_at"] is not None  # its document says so too
    assert _event_types(ctx)["user.deleted"] == 1
    _assert_documents_match_columns(ctx)


async def test_reminders_merge_into_an_invoice_stored_before_documents_were_kept(
    ctx: JobContext, make_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection_id = make_connection()
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    with ctx.sessions() as session, session.begin():
        invoice = _first_invoice_with_reminders(session)
        upstream_id, expected = invoice.upstream_id, _stored_reminders(ctx, invoice.upstream_id)
        invoice.document = None  # as a row written before migration 0003 has it
        invoice.reminders = []
    report = await _sync_reminders_again(ctx, connection_id, monkeypatch)
    assert report.counts.updated == 1  # that invoice; the others have their reminders already
    assert _stored_reminders(ctx, upstream_id) == expected
    _assert_documents_match_columns(ctx)


def test_a_pull_skips_the_records_at_since_only_once_that_instant_is_settled() -> None:
    since = datetime(2026, 3, 1, 14, 30, tzinfo=UTC)
    state = {"since": since.isoformat(), "page": 4, "listed_at": (since + timedelta(seconds=30)).isoformat()}
    position = sync_engine._Position(state)
    position.start()  # listed 30 s after `since`: a change may still have taken that instant
    assert (position.page, position.query_since()) == (1, since)
    position = sync_engine._Position({**state, "listed_at": (since + timedelta(hours=1)).isoformat()})
    position.start()
    assert position.query_since() == since + timedelta(microseconds=1)
    resumed = sync_engine._Position({**position.as_state(), "page": 2})  # a crash mid-pull: same query
    assert resumed.query_since() == since + timedelta(microseconds=1) and resumed.page == 2
