"""mirrored tables keep the portal's own last-modified time of each object (`upstream_modified_at`),
so a record read before the stored copy (a sync page listed before a fresh read or a write's
read-back, and written after) cannot overwrite it and report changes the portal never made. Empty
for rows written before it, and for objects the portal gives no such time: those are written as
before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import plooto_api.store.types

revision: str = "0007"
down_revision: str | None = "0006"
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
            batch_op.add_column(
                sa.Column(
                    "upstream_modified_at", plooto_api.store.types.UTCDateTime(timezone=True), nullable=True
                )
            )


def downgrade() -> None:
    for table in MIRRORED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("upstream_modified_at")
