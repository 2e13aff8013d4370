"""Invoices a later pull holds for their reminders (sync.engine._Deferred): a change and the reminders
sent meanwhile are one update, after the events of the customer payment that paid the invoice; and
nothing is lost or reported wrongly when a run stops, a feed fails part way or a page taking them is
a first pull's. Against the real sandbox over loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.sync import engine as sync_engine
from plooto_api.sync.engine import SyncEngine

from .test_sync import COMPANIES, SimulatedCrash, _assert_documents_match_columns


def _stop_at(feed: str) -> Callable[[str, str, int, int | None], None]:
    """A progress callback that stops the run (as a worker dying would) once `feed` wrote a page."""

    def stop(company: str, name: str, done: int, total: int | None) -> None:
        if name == feed:
            raise SimulatedCrash("the worker died here")

    return stop


def _sent_invoices(ctx: JobContext, count: int) -> list[tuple[str, str]]:
    """(gateway id, portal id) of `count` sent invoices of one company."""
    with ctx.sessions() as session:
        rows = session.execute(
            select(models.Invoice.company_id, models.Invoice.id, models.Invoice.upstream_id)
            .where(models.Invoice.status == "sent")
            .order_by(models.Invoice.company_id, models.Invoice.id)
        ).all()
    by_company: dict[str, list[tuple[str, str]]] = {}
    for company_id, invoice_id, upstream_id in rows:
        by_company.setdefault(company_id, []).append((invoice_id, upstream_id))
    return next(v[:count] for v in by_company.values() if len(v) >= count)


def _status(ctx: JobContext, invoice_id: str) -> str:
    with ctx.sessions() as session:
        return session.get(models.Invoice, invoice_id).status  # type: ignore[union-attr]


def _relist_marks(ctx: JobContext) -> set[str]:
    with ctx.sessions() as session:
        return {
            f"{c.company_upstream_id}/{c.object_type}"
            for c in session.scalars(select(models.SyncCursor))
            if (c.page_state or {}).get("relist")
        }


async def test_a_change_held_by_a_stopped_run_is_not_lost_when_the_next_run_holds_another(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    (first, first_upstream), (second, second_upstream) = _sent_invoices(ctx, 2)
    control.post("/mutate", json={"action": "viewInvoice", "invoiceId": first_upstream}).raise_for_status()
    control.post("/clock", json={"advance_minutes": 5}).raise_for_status()  # the next pull starts past it

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, cadence="fast", progress=_stop_at("reminders"))
    # What it held is to be listed again.
    assert any(mark.endswith("/invoices") for mark in _relist_marks(ctx))

    control.post("/mutate", json={"action": "viewInvoice", "invoiceId": second_upstream}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    # Each as the portal has it now (viewed, or paid by a customer payment meanwhile).
    assert _status(ctx, second) == await _portal_status(ctx, connection_id, second)
    # Held by the stopped run: its feed's mark, found by the next, is not taken off by what that
    # run held; the feed is listed whole again.
    assert _status(ctx, first) == await _portal_status(ctx, connection_id, first)


async def _portal_status(ctx: JobContext, connection_id: str, invoice_id: str) -> str:
    with ctx.sessions() as session:
        invoice = session.get(models.Invoice, invoice_id)
        company = session.get(models.Company, invoice.company_id)  # type: ignore[union-attr]
        company_upstream, upstream = company.upstream_id, invoice.upstream_id  # type: ignore[union-attr]
    portal = await ctx.portals.get(connection_id)
    record = await portal.fetch_object(company_upstream, "invoice", upstream)
    assert record is not None
    return str(record.fields["status"])


async def test_reminders_sent_to_invoices_held_for_a_first_pull_of_customer_payments_are_events(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # The customer payments feed failed in the first sync: its next pull is its first. The invoices
    # it takes (held since they changed and gained reminders) are written by that first-pull page.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"/customer-payments$",
                                  "status": 503}).raise_for_status()  # fmt: skip
    try:
        assert (await engine.sync_connection(connection_id)).state == "upstream_unavailable"
    finally:
        control.delete("/faults").raise_for_status()
    with ctx.sessions() as session:
        before = {
            invoice.id: {r.upstream_id for r in invoice.reminders if r.status == "sent"}
            for invoice in session.scalars(select(models.Invoice))
        }
    seq = _last_seq(ctx)
    control.post("/clock", json={"advance_days": 30}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok

    missing = {}
    for invoice_id, events in _events_since(ctx, seq, "invoice").items():
        served = events[-1].data
        newly_sent = {r["upstream_id"] for r in served["reminders"] if r["status"] == "sent"}
        newly_sent -= before.get(invoice_id, set())
        types = [event.type for event in events]
        if types.count("invoice.reminder_sent") != len(newly_sent):
            missing[invoice_id] = (types, len(newly_sent))
    assert not missing


async def _portal_invoices(ctx: JobContext, connection_id: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Every invoice the portal has: (status, its sent reminders' portal ids), by portal id."""
    portal = await ctx.portals.get(connection_id)
    with ctx.sessions() as session:
        companies = list(session.scalars(select(models.Company.upstream_id)))
    invoices: dict[str, str] = {}
    sent: dict[str, set[str]] = {}
    for company in companies:
        for feed in ("invoices", "reminders"):
            page_number = 1
            while True:
                page = await portal.list_changes(company, feed, modified_since=None, page_number=page_number,
                                                 page_size=200)  # fmt: skip
                for record in page.records:
                    if record.object_type == "invoice":
                        invoices[record.upstream_id] = str(record.fields["status"])
                    elif record.object_type == "invoice_reminder" and record.fields["status"] == "sent":
                        sent.setdefault(record.fields["invoice_id"].upstream_id, set()).add(
                            record.upstream_id
                        )
                if not page.has_more:
                    break
                page_number += 1
    return {i: (status, frozenset(sent.get(i, ()))) for i, status in invoices.items()}


def _stored_invoices(ctx: JobContext) -> dict[str, tuple[str, frozenset[str]]]:
    with ctx.sessions() as session:
        return {
            invoice.upstream_id: (
                invoice.status,
                frozenset(r.upstream_id for r in invoice.reminders if r.status == "sent"),
            )
            for invoice in session.scalars(select(models.Invoice).where(models.Invoice.deleted_at.is_(None)))
        }


@pytest.mark.parametrize("feed", ["invoices", "reminders", "customer_payments"])
async def test_a_run_stopped_at_each_feed_loses_nothing(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client, feed: str
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    control.post("/clock", json={"advance_days": 30}).raise_for_status()

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, cadence="fast", progress=_stop_at(feed))
    control.post("/clock", json={"advance_days": 3}).raise_for_status()  # more changes, held again
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    portal = await _portal_invoices(ctx, connection_id)
    stored = _stored_invoices(ctx)
    assert {k: v for k, v in portal.items() if stored.get(k) != v} == {}
    assert _relist_marks(ctx) == set()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _relist_marks(ctx) == set()


async def test_reminders_failing_on_a_later_page_lose_nothing_and_marks_clear(
    ctx: JobContext,
    make_connection: Callable[..., str],
    control: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    control.post("/clock", json={"advance_days": 30}).raise_for_status()
    seq = _last_seq(ctx)
    monkeypatch.setattr(sync_engine, "PAGE_SIZE", 3)
    faulted: list[int] = []

    def fail_later_pages(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "reminders" and not faulted:
            faulted.append(1)
            control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"/reminders$",
                                          "status": 503}).raise_for_status()  # fmt: skip

    try:
        report = await engine.sync_connection(connection_id, cadence="fast", progress=fail_later_pages)
    finally:
        control.delete("/faults").raise_for_status()
    assert report.failed_feeds and all(feed == "reminders" for _, feed, _ in report.failed_feeds)
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    portal = await _portal_invoices(ctx, connection_id)
    stored = _stored_invoices(ctx)
    assert {k: v for k, v in portal.items() if stored.get(k) != v} == {}
    for invoice_id, events in _events_since(ctx, seq, "invoice").items():
        types = [e.type for e in events]
        sent = [r for r in events[-1].data["reminders"] if r["status"] == "sent"]
        assert types.count("invoice.reminder_sent") <= len(sent), (invoice_id, types)
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _relist_marks(ctx) == set()


def _events_since(ctx: JobContext, seq: int, object_type: str) -> dict[str, list[models.Event]]:
    """The events after `seq` of objects of `object_type`, by object, in order."""
    with ctx.sessions() as session:
        by_object: dict[str, list[models.Event]] = {}
        for event in session.scalars(
            select(models.Event)
            .where(models.Event.seq > seq, models.Event.object_type == object_type)
            .order_by(models.Event.seq)
        ):
            by_object.setdefault(event.object_id or "", []).append(event)
        return by_object


def _invoice_statuses(ctx: JobContext) -> dict[str, str]:
    with ctx.sessions() as session:
        return {i: status for i, status in session.execute(select(models.Invoice.id, models.Invoice.status))}


def _last_seq(ctx: JobContext) -> int:
    with ctx.sessions() as session:
        return session.scalar(select(func.max(models.Event.seq))) or 0


async def test_an_invoice_that_changed_and_gained_reminders_is_one_update(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # The invoices feed wrote the invoice's change (overdue), then the reminders feed its reminders:
    # two `invoice.updated`, the first showing the invoice without the reminders sent meanwhile, a
    # state the portal never had.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        before = {
            invoice.id: (invoice.status, {r.upstream_id for r in invoice.reminders if r.status == "sent"})
            for invoice in session.scalars(select(models.Invoice))
        }
    seq = _last_seq(ctx)
    control.post("/clock", json={"advance_days": 30}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok

    both = 0
    for invoice_id, events in _events_since(ctx, seq, "invoice").items():
        types = [event.type for event in events]
        assert types.count("invoice.updated") + types.count("invoice.created") == 1, types
        status, sent = before.get(invoice_id, ("draft", set()))  # one a recurring plan made since
        served = events[-1].data
        newly_sent = {r["upstream_id"] for r in served["reminders"] if r["status"] == "sent"} - sent
        assert types.count("invoice.reminder_sent") == len(newly_sent)
        for event in events:  # each shows the invoice as it is now, its reminders with it
            assert event.data == served
        both += bool(newly_sent) and served["status"] != status
    assert both > 0  # some invoice both went overdue (or was paid) and had a reminder go out
    # The customer payment that paid an invoice is announced before the invoice paid by it.
    paid_by = {
        allocation["invoice_id"]: events[0].seq
        for events in _events_since(ctx, seq, "payment").values()
        for allocation in events[-1].data["allocations"]
    }
    paid = {
        invoice_id: next(event.seq for event in events if event.type == "invoice.paid")
        for invoice_id, events in _events_since(ctx, seq, "invoice").items()
        if "invoice.paid" in {event.type for event in events} and invoice_id in paid_by
    }
    assert paid and all(paid_by[invoice_id] < paid_seq for invoice_id, paid_seq in paid.items())
    assert _relist_marks(ctx) == set()  # nothing held is left waiting for a relist
    _assert_documents_match_columns(ctx)


async def test_invoices_held_for_their_reminders_are_not_lost_when_the_run_stops(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    before = _invoice_statuses(ctx)
    seq = _last_seq(ctx)
    control.post("/clock", json={"advance_days": 30}).raise_for_status()

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, cadence="fast", progress=_stop_at("reminders"))
    assert any(mark.endswith("/invoices") for mark in _relist_marks(ctx))
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok

    now = _invoice_statuses(ctx)
    assert _relist_marks(ctx) == set()
    changed = {invoice_id for invoice_id, status in now.items() if before.get(invoice_id) != status}
    assert changed
    events = _events_since(ctx, seq, "invoice")
    for invoice_id in changed:  # each change reported, the last event showing the invoice as it is
        assert events[invoice_id][-1].data["status"] == now[invoice_id]
    _assert_documents_match_columns(ctx)


async def test_invoices_held_for_their_reminders_are_written_when_the_reminders_fail(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    before = _invoice_statuses(ctx)
    seq = _last_seq(ctx)
    control.post("/clock", json={"advance_days": 30}).raise_for_status()
    control.post("/faults", json={"kind": "error", "method": "GET", "pathPattern": r"/reminders$",
                                  "status": 503}).raise_for_status()  # fmt: skip
    report = await engine.sync_connection(connection_id, cadence="fast")
    assert report.state == "upstream_unavailable"
    # Each feed pulled once: the held invoices were written, not listed whole again to be found.
    assert report.feeds == COMPANIES * sum(feed.cadence == "fast" for feed in sync_engine.FEEDS)

    now = _invoice_statuses(ctx)
    assert _relist_marks(ctx) == set()
    changed = {invoice_id for invoice_id, status in now.items() if before.get(invoice_id) != status}
    assert changed and "overdue" in {now[i] for i in changed}
    events = _events_since(ctx, seq, "invoice")
    for invoice_id in changed:  # written at the end of the run, one change each
        types = [event.type for event in events[invoice_id]]
        assert types.count("invoice.updated") + types.count("invoice.created") == 1, types
        assert events[invoice_id][-1].data["status"] == now[invoice_id]


async def test_a_held_invoice_of_a_new_customer_is_written_with_its_customer(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A held invoice is written at the end of the run: what it refers to that the store lacks (a
    # customer made since the customers feed last ran) is read then, as a page's would be.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        company = session.scalars(select(models.Company.upstream_id).order_by(models.Company.id)).first()
    mutation = {"action": "createCustomer", "companyId": company}
    customer = control.post("/mutate", json=mutation).json()["changed"][0]
    portal = await ctx.portals.get(connection_id)
    made = await portal.create_invoice(
        company, customer_upstream_id=customer, number=None, issue_date=None, terms=None, due_date=None,
        lines=[{"description": "Retainer", "amount": "10.00"}], memo=None, reference="held-invoice",
        send="now", scheduled_send_date=None, reminders=None, recurring=None,
    )  # fmt: skip
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    with ctx.sessions() as session:
        invoice = session.scalars(
            select(models.Invoice).where(models.Invoice.upstream_id == made.portal_id)
        ).one()
        stored = session.scalars(select(models.Customer).where(models.Customer.upstream_id == customer)).one()
        assert invoice.customer_id == stored.id
    assert _relist_marks(ctx) == set()
    assert [e.type for e in _events_since(ctx, 0, "invoice")[invoice.id]] == ["invoice.created"]


def _first_company_and_customer(ctx: JobContext) -> tuple[str, str, str, str]:
    """(gateway id, portal id, name) of the first company, and the portal id of its first customer."""
    with ctx.sessions() as session:
        company = session.scalars(select(models.Company).order_by(models.Company.id)).first()
        assert company is not None
        customer = session.scalars(
            select(models.Customer.upstream_id)
            .where(models.Customer.company_id == company.id)
            .order_by(models.Customer.id)
        ).first()
        assert customer is not None
        return company.id, company.upstream_id, company.name, customer


async def test_reminders_held_by_one_run_do_not_take_back_what_another_run_wrote_since(
    ctx: JobContext, settings: Settings, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Two gateways on one database sync one login. One holds a new invoice with its scheduled
    # reminders until the end of its run; meanwhile the other writes the first reminder sent. The
    # held (older) reminders then took it back to scheduled, with an `invoice.updated` saying so;
    # the stale copy stayed until a whole listing found the reminder sent again: a second
    # `invoice.reminder_sent` for one reminder.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    _, company_upstream, company_name, customer = _first_company_and_customer(ctx)
    today = date.fromisoformat(control.get("/clock").json()["now"][:10])
    portal = await ctx.portals.get(connection_id)
    made = await portal.create_invoice(
        company_upstream, customer_upstream_id=customer, number=None, issue_date=None, terms=None,
        due_date=today + timedelta(days=10), lines=[{"description": "Retainer", "amount": "10.00"}],
        memo=None, reference="two-gateways", send="now", scheduled_send_date=None, reminders=None,
        recurring=None,
    )  # fmt: skip
    control.post("/clock", json={"advance_minutes": 5}).raise_for_status()
    other: list[sync_engine.SyncReport] = []

    def other_gateway() -> None:
        async def run() -> None:
            second = JobContext.from_settings(settings, migrate=False)
            try:
                other.append(await SyncEngine(second).sync_connection(connection_id, cadence="fast"))
            finally:
                await second.aclose()

        asyncio.run(run())

    def meanwhile(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "customer_payments" and company == company_name and not other:
            control.post("/clock", json={"advance_days": 8}).raise_for_status()  # the first reminder goes
            thread = threading.Thread(target=other_gateway)
            thread.start()
            thread.join()

    assert (await engine.sync_connection(connection_id, cadence="fast", progress=meanwhile)).ok
    assert other and other[0].ok

    def reminders() -> tuple[str, dict[str, str], list[tuple[str, list[str]]]]:
        with ctx.sessions() as session:
            invoice = session.scalars(
                select(models.Invoice).where(models.Invoice.upstream_id == made.portal_id)
            ).one()
            events = [
                (event.type, sorted(r["status"] for r in event.data["reminders"]))
                for event in session.scalars(
                    select(models.Event)
                    .where(models.Event.object_id == invoice.id)
                    .order_by(models.Event.seq)
                )
            ]
            return invoice.id, {r.upstream_id: r.status for r in invoice.reminders}, events

    _, stored, events = reminders()
    assert sorted(stored.values()) == ["scheduled", "scheduled", "sent"], events
    assert events[-1][1] == ["scheduled", "scheduled", "sent"], events
    control.post("/clock", json={"advance_days": 2}).raise_for_status()  # a whole listing is due
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    _, stored, events = reminders()
    sent = [upstream_id for upstream_id, status in stored.items() if status == "sent"]
    assert [t for t, _ in events].count("invoice.reminder_sent") == len(sent), events


async def test_a_run_ending_does_not_take_off_the_mark_another_run_set_for_what_it_held(
    ctx: JobContext, settings: Settings, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Two gateways on one database sync one login. While one run (A) holds a changed invoice, the
    # other (B) lists an invoice made since, holds it, marks the invoices feed and stops. A, ending,
    # took the mark off as its own: B's invoice was never written (the cursor is past it).
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    company_id, company_upstream, company_name, customer = _first_company_and_customer(ctx)
    with ctx.sessions() as session:
        viewed = session.scalars(
            select(models.Invoice.upstream_id)
            .where(models.Invoice.company_id == company_id, models.Invoice.status == "sent")
            .order_by(models.Invoice.upstream_id)
        ).first()
        assert viewed is not None
    control.post(
        "/mutate", json={"action": "viewInvoice", "invoiceId": viewed}
    ).raise_for_status()  # A holds it
    control.post("/clock", json={"advance_minutes": 5}).raise_for_status()
    made: list[str] = []

    def other_gateway() -> None:
        async def run() -> None:
            second = JobContext.from_settings(settings, migrate=False)
            try:
                portal = await second.portals.get(connection_id)
                invoice = await portal.create_invoice(
                    company_upstream, customer_upstream_id=customer, number=None, issue_date=None,
                    terms=None, due_date=None, lines=[{"description": "Retainer", "amount": "10.00"}],
                    memo=None, reference="held-by-b", send="now", scheduled_send_date=None,
                    reminders={"enabled": False}, recurring=None,
                )  # fmt: skip
                made.append(str(invoice.portal_id))
                control.post("/clock", json={"advance_minutes": 5}).raise_for_status()
                with pytest.raises(SimulatedCrash):
                    await SyncEngine(second).sync_connection(
                        connection_id, cadence="fast", progress=_stop_at("reminders")
                    )
            finally:
                await second.aclose()

        asyncio.run(run())

    def meanwhile(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "customer_payments" and company == company_name and not made:
            thread = threading.Thread(target=other_gateway)
            thread.start()
            thread.join()

    assert (await engine.sync_connection(connection_id, cadence="fast", progress=meanwhile)).ok
    assert made
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    with ctx.sessions() as session:
        stored = session.scalars(select(models.Invoice).where(models.Invoice.upstream_id == made[0])).first()
    assert stored is not None
    assert _relist_marks(ctx) == set()


async def test_invoices_a_stopped_run_held_are_one_update_each_when_listed_again(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A run stopped before writing what it held: the next lists the marked feeds whole, and holds
    # again what the stopped run held (not only what changed since its cursor), so each such invoice
    # is one update with the reminders sent meanwhile, not one without them (an overdue invoice with
    # none sent, a state the portal never had) and another with them.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    control.post("/clock", json={"advance_days": 30}).raise_for_status()

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, cadence="fast", progress=_stop_at("customer_payments"))
    seq = _last_seq(ctx)
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    twice = {
        invoice_id: [event.type for event in events]
        for invoice_id, events in _events_since(ctx, seq, "invoice").items()
        if sum(event.type in ("invoice.created", "invoice.updated") for event in events) > 1
    }
    assert twice == {}
