"""bills keep the amount taken by scheduled payments (`amount_scheduled`, the portal's
scheduledAmount): its open balance (`amount_due`) leaves it out, so a scheduled bill read total
2048.82, paid 0.00, due 0.00. Rows written before it are filled from what they hold already (total
less paid less due) in the column and in their served document, so nothing reads as changed at the
next sync. Bills also keep the gateway's reference of a bill it created (`reference`, as payments and
invoices do), which their memo carried: it is split out of the memo of bills stored before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 18:00:00.000000
"""

import json
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("bills", schema=None) as batch_op:
        batch_op.add_column(sa.Column("amount_scheduled_minor", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("reference", sa.String(length=100), nullable=True))
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "UPDATE bills SET amount_scheduled_minor = total_minor - amount_paid_minor - amount_due_minor"
        )
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT id, document FROM bills WHERE id > :after AND document IS NOT NULL ORDER BY id LIMIT :n"
            ),
            {"after": after, "n": BATCH},
        ).all()
        if not rows:
            break
        for bill_id, document in rows:
            bill = _filled(json.loads(document))
            bind.execute(
                sa.text("UPDATE bills SET document = :document, memo = :memo, reference = :reference WHERE id = :id"),
                {"id": bill_id, "document": json.dumps(bill, separators=(",", ":"), ensure_ascii=False),
                 "memo": bill["memo"], "reference": bill["reference"]},
            )  # fmt: skip
        after = rows[-1][0]


# "<memo> [ref papi-…]": the memo the gateway wrote for a bill it created (upstream.portal).
_MEMO_TAG = re.compile(r"^(?P<memo>.*?) ?\[ref (?P<reference>papi-[^\]\s]+)\]$", re.DOTALL)


def _filled(bill: dict[str, Any]) -> dict[str, Any]:
    total, paid, due = (Decimal(bill[name]["amount"]) for name in ("total", "amount_paid", "amount_due"))
    scheduled = (total - paid - due).quantize(Decimal(bill["total"]["amount"]))  # the total's places
    filled: dict[str, Any] = {}
    for key, value in bill.items():  # in the order the schema serves them
        if key == "amount_due":
            filled["amount_scheduled"] = {
                "amount": format(scheduled, "f"),
                "currency": bill["total"]["currency"],
            }
        filled[key] = value
        if key == "memo":
            found = _MEMO_TAG.match(value) if isinstance(value, str) else None
            filled["memo"], filled["reference"] = (
                (found["memo"] or None, found["reference"]) if found else (value, None)
            )
    return filled


def downgrade() -> None:
    with op.batch_alter_table("bills", schema=None) as batch_op:
        batch_op.drop_column("reference")
        batch_op.drop_column("amount_scheduled_minor")
