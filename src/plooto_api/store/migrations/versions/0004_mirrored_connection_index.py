"""mirrored tables lose their index on connection_id alone: the unique (connection_id, upstream_id)
index leads with that column and serves the same lookups (the foreign key's cascade included), so
the single-column index only cost a write per row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIRRORED_TABLES = (
    "approval_rules",
    "bank_accounts",
    "bills",
    "captured_documents",
    "companies",
    "customers",
    "fx_conversions",
    "invoices",
    "payments",
    "portal_users",
    "recurring_invoices",
    "sync_mappings",
    "transactions",
    "vendors",
)


def upgrade() -> None:
    for table in MIRRORED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_connection_id")


def downgrade() -> None:
    for table in MIRRORED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f"ix_{table}_connection_id", ["connection_id"], unique=False)
