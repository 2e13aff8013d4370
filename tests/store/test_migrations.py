"""Migrations build the schema from nothing and match the models exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from plooto_api.store.database import (
    _alembic_config,
    create_db_engine,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from plooto_api.store.models import Base


def test_empty_sqlite_database_upgrades_to_head(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        assert current_revision(engine) is None
        upgrade_to_head(engine)
        assert current_revision(engine) == head_revision()
        upgrade_to_head(engine)  # a second run is a no-op
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    # `engine` is this run's backend (SQLite or PostgreSQL), migrated from empty by the fixtures.
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_filter_indexes_exist(engine: Engine) -> None:
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("bills")}
    assert {
        "ix_bills_company_id_status_id",
        "ix_bills_company_id_approval_status_id",
        "ix_bills_company_id_vendor_id_id",
        "ix_bills_company_id_due_date",
        "ix_bills_company_id_updated_at",
    } <= indexes


def test_logins_stored_twice_are_kept_and_new_ones_are_unique(tmp_path: Path) -> None:
    """Migration 0006 on a store where an older `connect` made two connections of one login: both
    stay, the newer marked as the older's duplicate; from then on the store holds one per login."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        command.upgrade(_alembic_config(engine), "0005")
        insert = text(
            "INSERT INTO connections (id, username, upstream_url, login_mode, state, state_changed_at, "
            "created_at, updated_at) VALUES (:id, :username, :url, 'http', 'healthy', :now, :now, :now)"
        )
        now = "2026-11-29 12:00:00.000000"
        with engine.begin() as conn:
            for connection_id, username in (
                ("conn_1", "a@x.test"),
                ("conn_2", "a@x.test"),
                ("conn_3", "b@x.test"),
            ):
                conn.execute(
                    insert, {"id": connection_id, "username": username, "url": "https://p.test", "now": now}
                )
        upgrade_to_head(engine)
        with engine.connect() as conn:
            marked = dict(conn.execute(text("SELECT id, duplicate_of FROM connections ORDER BY id")).all())
        assert marked == {"conn_1": None, "conn_2": "conn_1", "conn_3": None}
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                insert, {"id": "conn_4", "username": "b@x.test", "url": "https://p.test", "now": now}
            )
        with engine.begin() as conn:  # the same username at another portal is another login
            conn.execute(
                insert, {"id": "conn_5", "username": "b@x.test", "url": "https://q.test", "now": now}
            )
    finally:
        engine.dispose()


def test_bills_stored_before_0009_get_their_scheduled_amount_and_reference() -> None:
    import importlib.util

    from plooto_api.store.database import MIGRATIONS_DIR

    path = next((MIGRATIONS_DIR / "versions").glob("0009_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0009", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    money = {"amount_paid": "0.00", "amount_due": "48.82", "total": "2048.82"}
    bill = {"id": "bill_1", **{k: {"amount": v, "currency": "CAD"} for k, v in money.items()}, "memo": None}
    filled = migration._filled_bill({**bill, "memo": "Flour order [ref papi-op_01m98]"})
    assert filled["amount_scheduled"] == {"amount": "2000.00", "currency": "CAD"}
    assert list(filled).index("amount_scheduled") == list(filled).index("amount_due") - 1
    assert (filled["memo"], filled["reference"]) == ("Flour order", "papi-op_01m98")
    assert (migration._filled_bill({**bill, "memo": "[ref papi-op_2]"})["memo"], "papi-op_2") == (
        None,
        "papi-op_2",
    )
    untouched = migration._filled_bill({**bill, "memo": "see [ref 42]"})
    assert (untouched["memo"], untouched["reference"]) == ("see [ref 42]", None)
    invoice = migration._filled_invoice({"id": "inv_1", "sent_at": None, "memo": "Retainer [ref papi-op_3]",
                                         "reference": None, "recurring_invoice_id": None})  # fmt: skip
    assert list(invoice) == [
        "id",
        "sent_at",
        "scheduled_send_date",
        "memo",
        "reference",
        "recurring_invoice_id",
    ]
    assert (invoice["memo"], invoice["reference"], invoice["scheduled_send_date"]) == (
        "Retainer",
        "papi-op_3",
        None,
    )


def test_captured_documents_stored_with_no_size_before_0010_have_none(tmp_path: Path) -> None:
    # A document whose bill lacked its file was stored as 0 bytes; the adapter now says null.
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    now = "2026-12-07 12:00:00.000000"
    try:
        command.upgrade(_alembic_config(engine), "0009")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO connections (id, username, upstream_url, login_mode, state, state_changed_at, "
                "created_at, updated_at) VALUES ('conn_1', 'a@x.test', 'https://p.test', 'http', 'healthy', "
                ":now, :now, :now)"
            ), {"now": now})  # fmt: skip
            conn.execute(text(
                "INSERT INTO companies (id, connection_id, upstream_id, name, country, base_currency, status, "
                "is_accounting_firm, approval_policy, created_at, updated_at) VALUES ('cmp_1', 'conn_1', 'c-1', "
                "'Acme', 'CA', 'CAD', 'active', 0, '{}', :now, :now)"
            ), {"now": now})  # fmt: skip
            for doc_id, size in (("doc_1", 0), ("doc_2", 1234)):
                document = json.dumps({"id": doc_id, "size_bytes": size, "status": "converted"})
                conn.execute(text(
                    "INSERT INTO captured_documents (id, connection_id, company_id, upstream_id, filename, "
                    "content_type, size_bytes, status, fields, received_at, created_at, updated_at, document) "
                    "VALUES (:id, 'conn_1', 'cmp_1', :id, 'scan.pdf', 'application/pdf', :size, 'converted', "
                    "'{}', :now, :now, :now, :document)"
                ), {"id": doc_id, "size": size, "now": now, "document": document})  # fmt: skip
        upgrade_to_head(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, size_bytes, document FROM captured_documents ORDER BY id")
            ).all()
        stored = {row_id: (size, json.loads(document)["size_bytes"]) for row_id, size, document in rows}
        assert stored == {"doc_1": (None, None), "doc_2": (1234, 1234)}
    finally:
        engine.dispose()
