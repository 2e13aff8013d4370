"""Invoices a later pull holds for their reminders (sync.engine._Deferred): nothing lost or reported
wrongly when a run stops, a feed fails part way or a page taking them is a first pull's. Against the
real sandbox over loopback."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import select

from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.sync import engine as sync_engine
from plooto_api.sync.engine import SyncEngine

from .test_sync import SimulatedCrash, _events_since, _last_seq


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

    def stop_at_reminders(company: str, feed: str, done: int, total: int | None) -> None:
        if feed == "reminders":
            raise SimulatedCrash("the worker died here")

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, cadence="fast", progress=stop_at_reminders)
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

    def stop(company: str, name: str, done: int, total: int | None) -> None:
        if name == feed:
            raise SimulatedCrash("the worker died here")

    with pytest.raises(SimulatedCrash):
        await engine.sync_connection(connection_id, cadence="fast", progress=stop)
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
