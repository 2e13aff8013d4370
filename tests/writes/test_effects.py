"""What a write reports is its own effect, as the portal has it: a cancel done by this write (not a
rejection by someone else), a new invoice with the reminders the portal scheduled for it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from plooto_api.services import writes
from plooto_api.store import models

from .conftest import Gateway
from .test_actions import _cfo_of


def _payment_awaiting_approval(gateway: Gateway) -> tuple[models.Bill, dict[str, Any]]:
    bill = gateway.bill(status="approved", currency="CAD")
    payment = gateway.post("/create_payment", {"bill_id": bill.id, "amount": "50.00"}).json()
    assert payment["status"] == "pending_approval", payment
    return bill, payment


def _actions(gateway: Gateway, object_id: str) -> list[str]:
    with gateway.sessions()() as session:
        return list(
            session.scalars(select(models.AuditEntry.action).where(models.AuditEntry.object_id == object_id))
        )


def test_a_cancel_is_not_reported_done_when_someone_else_rejected_the_payment_meanwhile(
    gateway: Gateway, sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel's first send gets the portal's 503 (nothing applied); while it waits to send again,
    # an approver rejects the payment. The second send is refused as "done already", and a rejected
    # payment reads as `cancelled` too: that is not this write's cancel.
    bill, payment = _payment_awaiting_approval(gateway)
    cfo = _cfo_of(gateway, sandbox, bill)

    def rejected_meanwhile(sends: int) -> float:
        rejected = gateway.control.post("/mutate", json={"action": "rejectPayment", "paymentId": payment["upstream_id"],
                                                         "userEmail": cfo})  # fmt: skip
        assert rejected.status_code == 200, rejected.text
        return 0.0

    monkeypatch.setattr(writes, "resend_delay", rejected_meanwhile)
    gateway.fault(kind="error", method="POST", pathPattern=r"/cancel$", count=1, status=503)
    response = gateway.post(f"/payments/{payment['id']}/cancel")
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] in ("invalid_state", "already_decided")
    assert [p["status"] for p in gateway.ground_truth(bill.upstream_id)] == ["Rejected"]
    actions = _actions(gateway, payment["id"])
    assert "cancel_payment.succeeded" not in actions and "cancel_payment.failed" in actions


def test_a_cancel_whose_answer_was_lost_is_reported_done(gateway: Gateway) -> None:
    # Applied, the answer dropped: the second send is refused as done already, and the payment shows
    # this write's cancel.
    bill, payment = _payment_awaiting_approval(gateway)
    gateway.fault(kind="drop_response", method="POST", pathPattern=r"/cancel$", count=1)
    response = gateway.post(f"/payments/{payment['id']}/cancel")
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    assert operation["result"]["object"]["upstream"]["status_raw"] == "Cancelled"
    assert [p["status"] for p in gateway.ground_truth(bill.upstream_id)] == ["Cancelled"]


def _invoice_body(gateway: Gateway, number: str) -> dict[str, Any]:
    customer = gateway.get("/customers?limit=1").json()["data"][0]
    return {"customer_id": customer["id"], "number": number, "terms": "Net30",
            "lines": [{"description": "Consulting", "amount": "120.00"}]}  # fmt: skip


def _invoice_events(gateway: Gateway, invoice_id: str) -> list[models.Event]:
    with gateway.sessions()() as session:
        return list(
            session.scalars(
                select(models.Event).where(models.Event.object_id == invoice_id).order_by(models.Event.seq)
            )
        )


def _schedule(reminders: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["upstream_id"], r["kind"], r["scheduled_for"], r["status"]) for r in reminders]


@pytest.mark.parametrize("answer", ["answered", "lost"])
def test_a_new_invoice_carries_the_reminders_the_portal_scheduled(gateway: Gateway, answer: str) -> None:
    # They used to appear only with the next sync: the response and `invoice.created` had none.
    if answer == "lost":  # made, the answer dropped: the read-back finds it
        gateway.fault(kind="drop_response", method="POST", pathPattern=r"/invoices$", count=1)
    response = gateway.post("/create_invoice", _invoice_body(gateway, f"REM-{answer}"))
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    invoice = operation["result"]["object"]
    created = _schedule(invoice["reminders"])
    assert created and {kind for _, kind, _, _ in created} >= {"before_due", "after_due"}
    events = _invoice_events(gateway, invoice["id"])
    assert [e.type for e in events] == ["invoice.created"]
    assert _schedule(events[0].data["reminders"]) == created
    gateway.sync()  # the reminders feed brings the same schedule: nothing changes
    assert _schedule(gateway.get(f"/invoices/{invoice['id']}").json()["reminders"]) == created
    assert [e.type for e in _invoice_events(gateway, invoice["id"])] == ["invoice.created"]
