"""one connection per login: a unique index on (username, upstream_url), so two processes signing
the same new login in at once cannot both create its connection.

Connections an older `plooto-api connect` stored twice for one login are kept, working as before:
the oldest stays the login's connection, the others get `duplicate_of` (its id) and fall outside
the index. `plooto-api connections list` shows them; `connections remove` removes one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_A_DUPLICATE = sa.text("duplicate_of IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("duplicate_of", sa.String(length=40), nullable=True))
    bind = op.get_bind()
    kept: dict[tuple[str, str], str] = {}
    # Ids sort by creation time: the first of a login is its oldest connection.
    for connection_id, username, upstream_url in bind.execute(
        sa.text("SELECT id, username, upstream_url FROM connections ORDER BY id")
    ):
        first = kept.setdefault((username, upstream_url), connection_id)
        if first != connection_id:
            bind.execute(
                sa.text("UPDATE connections SET duplicate_of = :first WHERE id = :id"),
                {"first": first, "id": connection_id},
            )
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_index("ix_connections_username")
        batch_op.create_index(
            "uq_connections_login", ["username", "upstream_url"], unique=True,
            sqlite_where=NOT_A_DUPLICATE, postgresql_where=NOT_A_DUPLICATE,
        )  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_index("uq_connections_login")
        batch_op.create_index("ix_connections_username", ["username"], unique=False)
        batch_op.drop_column("duplicate_of")
