"""bills keep the amount taken by scheduled payments (`amount_scheduled`, the portal's
scheduledAmount): its open balance (`amount_due`) leaves it out, so a scheduled bill read total
2048.82, paid 0.00, due 0.00. Rows written before it are filled from what they hold already (total
less paid less due) in the column and in their served document, so nothing reads as changed at the
next sync. Bills also keep the gateway's reference of a bill it created (`reference`, as payments and
invoices do), which their memo carried: it is split out of the memo of bills and invoices stored
before. Invoices keep the day a draft is scheduled to be sent (`scheduled_send_date`): null in what
was stored before, until the invoice is read again.

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
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scheduled_send_date", sa.Date(), nullable=True))
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "UPDATE bills SET amount_scheduled_minor = total_minor - amount_paid_minor - amount_due_minor"
        )
    )
    _rewrite(bind, "bills", _filled_bill)
    _rewrite(bind, "invoices", _filled_invoice)


def _rewrite(bind: sa.Connection, table: str, fill: Any) -> None:
    """Each stored document of `table` filled in, with the memo and reference columns it gives."""
    after = ""
    while True:
        rows = bind.execute(
            sa.text(
                f"SELECT id, document FROM {table} WHERE id > :after AND document IS NOT NULL ORDER BY id LIMIT :n"
            ),
            {"after": after, "n": BATCH},
        ).all()
        if not rows:
            break
        for row_id, document in rows:
            filled = fill(json.loads(document))
            bind.execute(
                sa.text(f"UPDATE {table} SET document = :document, memo = :memo, reference = :reference WHERE id = :id"),
                {"id": row_id, "document": json.dumps(filled, separators=(",", ":"), ensure_ascii=False),
                 "memo": filled["memo"], "reference": filled["reference"]},
            )  # fmt: skip
        after = rows[-1][0]


# "<memo> [ref papi-…]": the memo the gateway wrote for a bill it created (upstream.portal).
_MEMO_TAG = re.compile(r"^(?P<memo>.*?) ?\[ref (?P<reference>papi-[^\]\s]+)\]$", re.DOTALL)


def _split_memo(memo: Any) -> tuple[Any, str | None]:
    found = _MEMO_TAG.match(memo) if isinstance(memo, str) else None
    return (found["memo"] or None, found["reference"]) if found else (memo, None)


def _filled_invoice(invoice: dict[str, Any]) -> dict[str, Any]:
    filled: dict[str, Any] = {}
    for key, value in invoice.items():  # in the order the schema serves them
        filled[key] = value
        if key == "sent_at":
            filled["scheduled_send_date"] = invoice.get("scheduled_send_date")
    memo, reference = _split_memo(invoice.get("memo"))
    filled["memo"], filled["reference"] = memo, reference or invoice.get("reference")
    return filled


def _filled_bill(bill: dict[str, Any]) -> dict[str, Any]:
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
            filled["memo"], filled["reference"] = _split_memo(value)
    return filled


def downgrade() -> None:
    with op.batch_alter_table("bills", schema=None) as batch_op:
        batch_op.drop_column("reference")
        batch_op.drop_column("amount_scheduled_minor")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("scheduled_send_date")
