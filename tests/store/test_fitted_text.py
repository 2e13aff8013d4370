"""Portal text the typed columns cannot hold as it is (longer than a bounded column; with NUL
characters, which PostgreSQL's text and jsonb refuse) is stored: clipped and without NUL in the
columns, whole in the document, and whole again when an object is built from its row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api import mapping, schemas
from plooto_api.store import models
from plooto_api.store.base import new_id
from plooto_api.store.bulk import insert_rows
from plooto_api.store.database import transaction
from plooto_api.store.types import RawJSON
from support import factories

LONG = "Long " + "x" * 600


def _objects() -> tuple[schemas.Company, schemas.Vendor, schemas.Bill, schemas.Invoice]:
    company = factories.company()
    every = {o.object: o for o in factories.every_object(company.id)}
    vendor = every["vendor"].model_copy(update={
        "name": LONG,
        "email": "nul\x00@vendor.test",
        "address": {"line1": "1 Bay\x00 St", "city\x00": "Toronto", "lines": ["a\x00", LONG]},
    })  # fmt: skip
    bill = cast(schemas.Bill, every["bill"])
    steps = [
        step.model_copy(update={"approver_name": LONG, "comment": "ok\x00" + LONG})
        for step in bill.approval.steps
    ]
    bill = bill.model_copy(update={
        "vendor_id": vendor.id,
        "number": "N\x00-" + LONG,
        "memo": "memo\x00" + LONG,
        "line_items": [item.model_copy(update={"description": "\x00" + LONG}) for item in bill.line_items],
        "approval": bill.approval.model_copy(update={"steps": steps}),
        "upstream": bill.upstream.model_copy(update={"status_raw": "ApprovalRequired" + LONG}),
    })  # fmt: skip
    invoice = cast(schemas.Invoice, every["invoice"])
    invoice = invoice.model_copy(update={
        "customer_id": None, "recurring_invoice_id": None,
        "reminders": [r.model_copy(update={"upstream_id": "R\x00" + LONG}) for r in invoice.reminders],
    })  # fmt: skip
    # Valid objects (what the sync makes of the portal's records), whose JSON is valid JSON.
    for obj in (vendor, bill, invoice):
        assert type(obj).model_validate_json(obj.model_dump_json()) == obj
    return company, cast(schemas.Vendor, vendor), bill, invoice


def _connection(session: Session) -> str:
    connection = models.Connection(
        id=new_id("conn"), username="a@firm.test", upstream_url="http://portal.test"
    )
    session.add(connection)
    session.flush()
    return connection.id


def _check_stored(session: Session, originals: list[Any]) -> None:
    for original in originals:
        row = session.get_one(mapping.object_map_for(original.object).model, original.id)
        assert mapping.to_schema(row) == original, original.object  # whole again
        assert json.loads(row.document) == original.model_dump(mode="json")
    vendor = session.get_one(models.Vendor, originals[0].id)
    assert vendor.name == LONG[:200] and vendor.email == "nul@vendor.test"
    assert vendor.address == {"line1": "1 Bay St", "city": "Toronto", "lines": ["a", LONG]}
    bill = session.get_one(models.Bill, originals[1].id)
    assert bill.number == ("N-" + LONG)[:100] and bill.memo == "memo" + LONG
    assert bill.upstream_status_raw == ("ApprovalRequired" + LONG)[:64]
    assert [item.description for item in bill.line_items] == [LONG[:500]] * 2
    assert [step.approver_name for step in bill.approval_steps] == [LONG[:200]] * 2
    assert [step.comment for step in bill.approval_steps] == ["ok" + LONG] * 2
    invoice = session.get_one(models.Invoice, originals[2].id)
    assert [r.upstream_id for r in invoice.reminders] == [("R" + LONG)[:64]] * 2


def test_unfitting_text_is_stored_by_the_orm(sessions: sessionmaker[Session]) -> None:
    company, vendor, bill, invoice = _objects()
    with transaction(sessions) as session:
        connection_id = _connection(session)
        for obj in (company, vendor, bill, invoice):
            session.add(mapping.new_row(obj, connection_id=connection_id))
            session.flush()
    with sessions() as session:
        _check_stored(session, [vendor, bill, invoice])
        # Deleted: the object built from its row (to rewrite its document) keeps its texts whole.
        row = session.get_one(models.Vendor, vendor.id)
        row.deleted_at = datetime(2026, 12, 1, tzinfo=UTC)
        assert mapping.to_schema(row) == vendor.model_copy(update={"deleted_at": row.deleted_at})


def test_unfitting_text_is_stored_in_bulk_and_updated(sessions: sessionmaker[Session]) -> None:
    company, vendor, bill, invoice = _objects()
    with transaction(sessions) as session:  # as a sync's page inserts new objects (COPY on PostgreSQL)
        connection_id = _connection(session)
        session.add(mapping.new_row(company, connection_id=connection_id))
        session.flush()
        for obj in (vendor, bill, invoice):
            spec = mapping.object_map_for(obj.object)
            stored = mapping.row_values(obj, connection_id=connection_id)
            insert_rows(session, spec.model.__table__, [stored.values])
            for relationship, rows in stored.children.items():
                child_rows = [{**row, spec.child_key: obj.id} for row in rows]
                insert_rows(session, spec.child_map(relationship).model.__table__, child_rows)
    with sessions() as session:
        _check_stored(session, [vendor, bill, invoice])
    # An update that brings NUL characters to a row stored without (the ORM's UPDATE path).
    plain = vendor.model_copy(update={"name": "Plain", "email": None, "address": None})
    renamed = vendor.model_copy(update={"name": "Re\x00named"})
    with transaction(sessions) as session:
        row = session.get_one(models.Vendor, vendor.id)
        mapping.apply_to_row(mapping.row_values(plain, connection_id=connection_id), row)
    with transaction(sessions) as session:
        row = session.get_one(models.Vendor, vendor.id)
        assert mapping.to_schema(row) == plain
        mapping.apply_to_row(mapping.row_values(renamed, connection_id=connection_id), row)
    with sessions() as session:
        row = session.get_one(models.Vendor, vendor.id)
        assert row.name == "Renamed" and mapping.to_schema(row) == renamed


def test_child_rows_alone_are_fitted() -> None:
    _, _, _, invoice = _objects()
    rows = mapping.child_rows(invoice, "reminders")
    assert [row["upstream_id"] for row in rows] == [("R" + LONG)[:64]] * 2


def test_events_carrying_nul_characters_are_stored(sessions: sessionmaker[Session]) -> None:
    document = json.dumps({"name": "Nul\x00Payee", "note": "a \\u0000 b", "odd\x00key": 1})
    with transaction(sessions) as session:
        insert_rows(session, cast(Table, models.Event.__table__), [
            {"id": "evt_nul_1", "type": "vendor.created", "connection_id": None, "company_id": None,
             "object_type": "vendor", "object_id": "ven_1", "data": RawJSON(document),
             "created_at": datetime(2026, 12, 1, tzinfo=UTC)},
            {"id": "evt_nul_2", "type": "vendor.updated", "connection_id": None, "company_id": None,
             "object_type": "vendor", "object_id": "ven_1", "data": {"name": "Nul\x00Payee"},
             "created_at": datetime(2026, 12, 1, tzinfo=UTC)},
        ])  # fmt: skip
    with sessions() as session:
        data = list(session.scalars(select(models.Event.data).order_by(models.Event.id)))
        if session.get_bind().dialect.name == "postgresql":  # jsonb holds no NUL: they are left out
            assert data == [{"name": "NulPayee", "note": "a \\u0000 b", "oddkey": 1}, {"name": "NulPayee"}]
        else:
            assert data == [json.loads(document), {"name": "Nul\x00Payee"}]


def test_json_written_through_the_orm_may_carry_nul_characters(sessions: sessionmaker[Session]) -> None:
    # A write's result holds the object the portal answered (a step comment with a NUL, say): on
    # PostgreSQL storing it failed, and the write was retried though the portal had applied it.
    with transaction(sessions) as session:
        session.add(models.Event(id="evt_nul_orm", type="bill.updated", data={"comment": "ok\x00 fine"}))
    with sessions() as session:
        stored = session.scalars(select(models.Event.data).where(models.Event.id == "evt_nul_orm")).one()
    if session.get_bind().dialect.name == "postgresql":
        assert stored == {"comment": "ok fine"}
    else:
        assert stored == {"comment": "ok\x00 fine"}
