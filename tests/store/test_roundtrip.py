"""Every object type survives store -> load -> schema unchanged, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic_core import TzInfo
from sqlalchemy import DateTime, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session, sessionmaker

from plooto_api import mapping
from plooto_api.store import models
from plooto_api.store.base import new_id
from plooto_api.store.repository import ObjectRepository
from plooto_api.store.scope import AccessScope
from plooto_api.store.types import UTCDateTime
from support import factories


def _connection(session: Session) -> models.Connection:
    conn = models.Connection(
        id=new_id("conn"), username="controller@northwind-cpa.test", upstream_url="http://127.0.0.1:8500"
    )
    session.add(conn)
    return conn


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> tuple[str, list]:
    company = factories.company()
    objects = [company, *factories.every_object(company.id)]
    with sessions.begin() as session:
        conn = _connection(session)
        session.flush()
        # The unit of work orders inserts by relationship(), not by bare foreign keys, so rows
        # are flushed in dependency order (company, vendor, bill, …), as sync writes them.
        for obj in objects:
            session.add(mapping.new_row(obj, connection_id=conn.id))
            session.flush()
    return conn.id, objects


def test_every_object_type_round_trips(sessions: sessionmaker[Session], seeded: tuple[str, list]) -> None:
    _, objects = seeded
    assert {type(o).__name__ for o in objects} >= {
        "Company", "BankAccount", "User", "ApprovalRule", "Vendor", "Customer", "Bill", "Payment",
        "RecurringInvoice", "Invoice", "FxConversion", "Transaction", "CapturedDocument", "SyncMapping",
    }  # fmt: skip
    with sessions() as session:
        for original in objects:
            spec = mapping.object_map_for(original.object)
            row = ObjectRepository(session, spec.model).get(original.id, AccessScope.unrestricted())
            assert row is not None, original.object
            loaded = mapping.to_schema(row)
            assert loaded == original, original.object
            assert loaded.model_dump(mode="json") == original.model_dump(mode="json")


def test_money_is_exact_and_serialized_as_decimal_strings(
    sessions: sessionmaker[Session], seeded: tuple[str, list]
) -> None:
    _, objects = seeded
    bill = next(o for o in objects if o.object == "bill")
    with sessions() as session:
        row = session.get(models.Bill, bill.id)
        assert row is not None
        assert row.total_minor == 90434  # integer minor units in the database
        loaded = mapping.to_schema(row)
    body = loaded.model_dump(mode="json")
    assert body["total"] == {"amount": "904.34", "currency": "CAD"}
    assert body["line_items"][1]["quantity"] == "0.5"
    assert [s["decision"] for s in body["approval"]["steps"]] == ["approved", "pending"]
    fx = next(o for o in objects if o.object == "fx_conversion")
    with sessions() as session:
        fx_row = session.get(models.FxConversion, fx.id)
        assert fx_row is not None
        assert fx_row.rate == Decimal("0.731245120")
        assert mapping.to_schema(fx_row).model_dump(mode="json")["target"] == {
            "amount": "731.25", "currency": "USD",
        }  # fmt: skip


def test_times_come_back_timezone_aware_utc(
    sessions: sessionmaker[Session], seeded: tuple[str, list]
) -> None:
    _, objects = seeded
    payment = next(o for o in objects if o.object == "payment")
    with sessions() as session:
        row = session.get(models.Payment, payment.id)
        assert row is not None
        assert row.created_at == factories.T0
        assert row.created_at.utcoffset() == timedelta(0)
        assert [h.occurred_at.tzinfo for h in row.status_history] == [UTC, UTC]


def test_naive_datetimes_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(Exception, match="naive datetime"), sessions.begin() as session:
        session.add(
            models.Connection(
                id=new_id("conn"),
                username="u",
                upstream_url="http://x",
                state_changed_at=datetime(2026, 1, 1),
            )
        )


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 8, 1, 30, 0, 7, tzinfo=timezone(timedelta(hours=-5))),
        datetime(999, 1, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 0, 5, tzinfo=TzInfo(0)),  # a zero offset other than the UTC singleton
    ],
)
def test_sqlite_stores_utc_times_as_sqlalchemy_datetime_text(value: datetime) -> None:
    # UTCDateTime binds SQLite text in one step; it must be exactly what DATETIME writes (and reads
    # back), or stored rows and range filters would change meaning.
    dialect = sqlite.dialect()
    ours = UTCDateTime().bind_processor(dialect)
    reference = dialect.type_descriptor(DateTime(timezone=True)).bind_processor(dialect)
    assert ours is not None and reference is not None
    assert ours(value) == reference(value.astimezone(UTC).replace(tzinfo=None))
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        ours(value.replace(tzinfo=None))


def test_update_replaces_children_in_place(sessions: sessionmaker[Session], seeded: tuple[str, list]) -> None:
    connection_id, objects = seeded
    bill = next(o for o in objects if o.object == "bill")
    data = bill.model_dump()
    data.update(
        line_items=data["line_items"][:1],
        approval={"status": "approved", "steps": [{"approver_name": "Sam", "decision": "approved"}]},
        status="approved",
    )
    changed = type(bill).model_validate(data)
    with sessions.begin() as session:
        repo = ObjectRepository(session, models.Bill)
        row = repo.get_by_upstream_id(connection_id, bill.upstream_id)
        assert row is not None
        mapping.apply_to_row(mapping.row_values(changed, connection_id=connection_id), row)
    with sessions() as session:
        assert session.scalars(select(models.BillLineItem)).all().__len__() == 1
        loaded = mapping.to_schema(session.get(models.Bill, bill.id))  # type: ignore[arg-type]
        assert loaded == changed


def test_gateway_records_round_trip(sessions: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    with sessions.begin() as session:
        conn = _connection(session)
        session.flush()
        session.add_all(
            [
                models.ConnectionStateChange(connection_id=conn.id, from_state="healthy",
                                             to_state="requires_action", reason="mfa"),
                models.SyncCursor(connection_id=conn.id, company_upstream_id="C-1", object_type="bill",
                                  watermark="2026-11-27T14:00:00Z", page_state={"page": 3}),
                models.Operation(id=new_id("op"), connection_id=conn.id, kind="create_payment",
                                 request={"bill_id": "bill_x", "amount": "10.00"}, reference="plooto-api:op_1"),
                models.IdempotencyRecord(owner="tok_1", key="k" * 255, request_method="POST",
                                         request_path="/create_payment", request_hash="ab" * 32,
                                         expires_at=now + timedelta(days=7)),
                models.Event(id=new_id("evt"), type="bill.created", object_type="bill", object_id="bill_x",
                             data={"id": "bill_x", "total": {"amount": "1.00", "currency": "CAD"}}),
                models.ApiToken(id=new_id("tok"), prefix="pk_abc", token_hash="f" * 64,
                                scopes=["bills:read"], company_ids=["cmp_1"]),
                models.AuditEntry(id=new_id("aud"), actor="tok_1", action="payment.create", hash="0" * 64,
                                  detail={"amount": "10.00"}),
                models.VaultEntry(id=new_id("vlt"), owner_id=conn.id, purpose="password", key_id="k1",
                                  wrapped_data_key=b"\x00\x01", nonce=b"\x02" * 12, ciphertext=b"\xff" * 40),
            ]
        )  # fmt: skip
        endpoint = models.WebhookEndpoint(id=new_id("we"), url="https://hooks.example.test/plooto")
        session.add(endpoint)
        session.flush()
        event_id = session.scalars(select(models.Event.id)).one()
        delivery = models.WebhookDelivery(id=new_id("whd"), endpoint_id=endpoint.id, event_id=event_id)
        session.add(delivery)
        session.flush()
        session.add(
            models.WebhookDeliveryAttempt(delivery_id=delivery.id, response_status=500, duration_ms=12)
        )
    with sessions() as session:
        assert session.scalars(select(models.ConnectionStateChange.reason)).one() == "mfa"
        assert session.scalars(select(models.SyncCursor.page_state)).one() == {"page": 3}
        assert session.scalars(select(models.IdempotencyRecord.key)).one() == "k" * 255
        token = session.scalars(select(models.ApiToken)).one()
        assert mapping.api_token_to_schema(token).companies == ["cmp_1"]
        assert "token_hash" not in mapping.api_token_to_schema(token).model_dump()
        assert session.scalars(select(models.VaultEntry.ciphertext)).one() == b"\xff" * 40
        assert session.scalars(select(models.WebhookDeliveryAttempt.response_status)).one() == 500
        event = mapping.event_to_schema(session.scalars(select(models.Event)).one())
        assert event.data["total"]["amount"] == "1.00"
        op = mapping.operation_to_schema(session.scalars(select(models.Operation)).one())
        assert op.status == "pending"


def test_one_row_per_portal_object_per_connection(sessions: sessionmaker[Session]) -> None:
    company = factories.company()
    with pytest.raises(Exception, match=r"(?i)unique"), sessions.begin() as session:
        conn = _connection(session)
        session.flush()
        session.add(mapping.new_row(company, connection_id=conn.id))
        session.flush()
        twin = company.model_copy(update={"id": new_id("cmp")})
        session.add(mapping.new_row(twin, connection_id=conn.id))
        session.flush()
