"""object documents: each mirrored row keeps its normalized JSON, which reads serve as is

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 16:00:55.450631
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("approval_rules", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("bank_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("bills", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("captured_documents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("companies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("fx_conversions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("portal_users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("recurring_invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("sync_mappings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))

    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("sync_mappings", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("recurring_invoices", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("portal_users", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("fx_conversions", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("companies", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("captured_documents", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("bills", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("bank_accounts", schema=None) as batch_op:
        batch_op.drop_column("document")

    with op.batch_alter_table("approval_rules", schema=None) as batch_op:
        batch_op.drop_column("document")
