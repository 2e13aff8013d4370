"""invoice reminders keep the portal's reminder id and kind: the reminders feed updates each one
(a scheduled reminder that is later sent) rather than adding it again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice_reminders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoice_reminders", schema=None) as batch_op:
        batch_op.drop_column("kind")
        batch_op.drop_column("upstream_id")
