"""A bill's amounts reconcile: total = amount_paid + amount_scheduled + amount_due. The portal's open
balance leaves out what scheduled payments have taken, so without `amount_scheduled` a scheduled bill
read total 2048.82, paid 0.00, due 0.00. Migration 0009 fills it for bills stored before it."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

from alembic import command
from sqlalchemy import delete, select, text

from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.store.database import _alembic_config, upgrade_to_head
from plooto_api.sync.engine import SyncEngine


def _documents(ctx: JobContext) -> dict[str, dict[str, object]]:
    with ctx.sessions() as session:
        return {row.id: json.loads(row.document) for row in session.scalars(select(models.Bill))}


def _amount(bill: dict[str, object], name: str) -> Decimal:
    money = bill[name]
    assert isinstance(money, dict)
    return Decimal(money["amount"])


async def test_bill_amounts_reconcile_and_stored_bills_are_filled_in(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    synced = _documents(ctx)
    for bill in synced.values():
        parts = sum(_amount(bill, name) for name in ("amount_paid", "amount_scheduled", "amount_due"))
        assert parts == _amount(bill, "total"), bill["id"]
    scheduled = [b for b in synced.values() if _amount(b, "amount_scheduled") > 0]
    assert scheduled, "the seed schedules payments of some bills"
    assert any(_amount(b, "amount_due") == 0 and b["status"] == "scheduled" for b in scheduled)

    # A store from before migration 0009: no column, documents without the field.
    db = ctx.sessions.kw["bind"]
    try:
        with db.begin() as conn:  # (a downgrade would rebuild the table on SQLite: its line items would go)
            for table, column in (("bills", "amount_scheduled_minor"), ("bills", "reference"),
                                  ("invoices", "scheduled_send_date")):  # fmt: skip
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        command.stamp(_alembic_config(db), "0008")
        with db.begin() as conn:
            for bill_id, bill in synced.items():
                old = {k: v for k, v in bill.items() if k not in ("amount_scheduled", "reference")}
                conn.execute(
                    text("UPDATE bills SET document = :d WHERE id = :id"),
                    {"d": json.dumps(old), "id": bill_id},
                )
    finally:
        upgrade_to_head(db)
    assert _documents(ctx) == synced
    with ctx.sessions() as session:
        for row in session.scalars(select(models.Bill)):
            assert Decimal(row.amount_scheduled_minor) / 100 == _amount(synced[row.id], "amount_scheduled")

    # Everything read again from the start: nothing reads as changed.
    with ctx.sessions.begin() as session:
        session.execute(delete(models.SyncCursor).where(models.SyncCursor.connection_id == connection_id))
    report = await engine.sync_connection(connection_id)
    assert report.ok, report.error
    assert report.counts.unchanged >= len(synced)
    assert report.counts.created == 0 and "bill" not in report.counts.by_type
    # (An invoice a draft of which is scheduled to be sent reads its send date anew.)
    with ctx.sessions() as session:
        scheduled = session.scalars(
            select(models.Invoice).where(models.Invoice.scheduled_send_date.is_not(None))
        ).all()
    assert report.counts.updated == len(scheduled)
