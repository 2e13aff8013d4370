"""Migrations build the schema from nothing and match the models exactly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from plooto_api.store.database import create_db_engine, current_revision, head_revision, upgrade_to_head
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
