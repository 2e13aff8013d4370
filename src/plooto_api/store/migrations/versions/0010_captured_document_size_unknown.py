"""captured documents may not know their size (`size_bytes` null): the size is that of the bill's
attachment of the document's name, and a bill without one gave 0, a size no scanned file has. Rows
stored with 0 are set to null, in the column and in their served document, as the next read of
them would (so nothing reads as changed at the next sync).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 00:00:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("captured_documents", schema=None) as batch_op:
        batch_op.alter_column("size_bytes", existing_type=sa.BigInteger(), nullable=True)
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, document FROM captured_documents WHERE size_bytes = 0")).all()
    for row_id, document in rows:
        served = None
        if document is not None:
            served = json.loads(document)
            served["size_bytes"] = None
            served = json.dumps(served, separators=(",", ":"), ensure_ascii=False)
        bind.execute(
            sa.text("UPDATE captured_documents SET size_bytes = NULL, document = :document WHERE id = :id"),
            {"id": row_id, "document": served},
        )


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE captured_documents SET size_bytes = 0 WHERE size_bytes IS NULL"))
    with op.batch_alter_table("captured_documents", schema=None) as batch_op:
        batch_op.alter_column("size_bytes", existing_type=sa.BigInteger(), nullable=False)
