"""Approvals, cancellation, bills (with an attachment), invoices and reminders against the sandbox."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import select

from plooto_api.jobs import JobContext
from plooto_api.services.audit import verify_chain
from plooto_api.store import models
from plooto_api.sync.engine import SyncEngine

from .conftest import Gateway


def _events(gw: Gateway) -> Counter[str]:
    with gw.sessions()() as session:
        return Counter(session.scalars(select(models.Event.type)))


def _cfo_email(sandbox: str, company: str | None = None) -> str:
    """A CFO's e-mail; of `company` (its name) when given: each company has a CFO of its own."""
    users = httpx.get(f"{sandbox}/__sandbox/users").json()
    return next(
        u["email"]
        for u in users
        if u["email"].startswith("cfo@") and (company is None or company in u["roles"])
    )


def _cfo_of(gateway: Gateway, sandbox: str, bill: models.Bill) -> str:
    """The CFO of the bill's company (which of the companies a test's bill is in is not fixed)."""
    with gateway.sessions()() as session:
        company = session.get(models.Company, bill.company_id)
        assert company is not None
        return _cfo_email(sandbox, company.name)


def _pending_bill(gw: Gateway, below: int = 2_500_000, skip: str | None = None) -> models.Bill:
    with gw.sessions()() as session:
        bills = session.scalars(
            select(models.Bill)
            .where(models.Bill.connection_id == gw.connection_id, models.Bill.approval_status == "pending",
                   models.Bill.total_minor < below, models.Bill.id != (skip or ""))
            .order_by(models.Bill.id)
        ).all()  # fmt: skip
    assert bills, "the seed has bills awaiting approval"
    return bills[0]


def test_approve_and_reject_bills_as_an_approver(make_gateway: Any, sandbox: str) -> None:
    gw = make_gateway(username=_cfo_email(sandbox), totp=None)
    first = _pending_bill(gw)
    other = _pending_bill(gw, below=10**12, skip=first.id)
    pending = [first, other]
    approved = gw.post(f"/approvals/{pending[0].id}/approve", {"comment": "looks right"}, key="appr-1")
    assert approved.status_code == 200, approved.text
    assert approved.json()["approval"]["status"] == "approved"
    assert approved.json()["status"] == "approved"
    rejected = gw.post(f"/approvals/{pending[1].id}/reject", {"comment": "duplicate invoice"})
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    again = gw.post(f"/approvals/{pending[0].id}/approve")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_awaiting_approval"
    assert _events(gw)["bill.approval_updated"] >= 2
    with gw.sessions()() as session:
        actions = set(session.scalars(select(models.AuditEntry.action)))
        assert {"approve_bill.succeeded", "reject_bill.succeeded"} <= actions
        assert verify_chain(session) == []


def test_the_portal_refuses_an_approver_not_on_the_level(gateway: Gateway) -> None:
    bill = _pending_bill(gateway)
    response = gateway.post(f"/approvals/{bill.id}/approve")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "not_an_approver"


def test_approval_under_a_dropped_response_is_done_once(make_gateway: Any, sandbox: str) -> None:
    gw = make_gateway(username=_cfo_email(sandbox), totp=None)
    bill = _pending_bill(gw)
    gw.fault(kind="drop_response", method="POST", pathPattern=r"/approve$", count=1)
    response = gw.post(f"/approvals/{bill.id}/approve")
    assert response.status_code in (200, 202), response.text
    operation = gw.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    assert operation["result"]["object"]["approval"]["status"] == "approved"


def test_cancel_a_payment(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    payment = gateway.post("/create_payment", {"bill_id": bill.id}).json()
    assert payment["status"] in ("pending_approval", "scheduled")
    assert gateway.get(f"/bills/{bill.id}").json()["amount_due"]["amount"] == "0.00"
    cancelled = gateway.post(f"/payments/{payment['id']}/cancel", key="cancel-1")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # The bill is open again in the store at once, not after the next sync.
    reopened = gateway.get(f"/bills/{bill.id}").json()
    assert reopened["status"] == "approved"
    assert reopened["amount_due"] == payment["amount"]
    again = gateway.post(f"/payments/{payment['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "payment_not_cancellable"
    assert [p["status"] for p in gateway.ground_truth(bill.upstream_id)] == ["Cancelled"]


def _vendor(gw: Gateway) -> models.Vendor:
    with gw.sessions()() as session:
        vendor = session.scalars(
            select(models.Vendor)
            .where(models.Vendor.connection_id == gw.connection_id, models.Vendor.currency == "CAD")
            .order_by(models.Vendor.id)
        ).first()
    assert vendor is not None
    return vendor


BILL = {"number": "INV-7781", "issue_date": "2026-02-27", "due_date": "2026-03-27", "memo": "March supplies",
        "lines": [{"description": "Paper", "quantity": "10", "unit_price": "12.50"},
                  {"description": "Toner", "amount": "89.99", "account_code": "6100"}]}  # fmt: skip


def test_create_a_bill_with_an_attachment(gateway: Gateway) -> None:
    import json

    vendor = _vendor(gateway)
    body = {**BILL, "vendor_id": vendor.id}
    response = gateway.client.post(
        "/create_bill", headers={**gateway.headers, "Idempotency-Key": "bill-1"},
        data={"bill": json.dumps(body)}, files={"file": ("inv-7781.pdf", b"%PDF-1.4 test", "application/pdf")},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    bill = response.json()
    assert bill["object"] == "bill" and bill["number"] == "INV-7781"
    assert bill["total"] == {"amount": "214.99", "currency": "CAD"}
    assert [a["file_name"] for a in bill["attachments"]] == ["inv-7781.pdf"]
    # The memo as written, and the gateway's reference apart (it travels in the portal's memo).
    assert (
        bill["memo"] == "March supplies" and bill["reference"] == f"papi-{response.headers['Operation-Id']}"
    )
    assert _events(gateway)["bill.created"] >= 1

    def again(content: bytes) -> Any:
        return gateway.client.post(
            "/create_bill", headers={**gateway.headers, "Idempotency-Key": "bill-1"},
            data={"bill": json.dumps(body)}, files={"file": ("inv-7781.pdf", content, "application/pdf")},
        )  # fmt: skip

    assert again(b"%PDF-1.4 test").headers.get("Idempotent-Replayed") == "true"
    # Another file of the same name and size is another request, not the first one's replay.
    other = again(b"%PDF-1.4 TEST")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_a_bill_is_created_once_when_its_response_is_dropped(gateway: Gateway) -> None:
    vendor = _vendor(gateway)
    gateway.fault(kind="drop_response", method="POST", pathPattern=r"/bills$", count=1)
    response = gateway.post("/create_bill", {**BILL, "vendor_id": vendor.id, "number": "INV-DROP"})
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation

    async def resync() -> bool:
        ctx = JobContext.from_settings(gateway.settings, migrate=False)
        try:
            return (await SyncEngine(ctx).sync_connection(gateway.connection_id)).ok
        finally:
            await ctx.aclose()

    assert asyncio.run(resync())
    with gateway.sessions()() as session:
        references = list(
            session.scalars(select(models.Bill.reference).where(models.Bill.number == "INV-DROP"))
        )
    assert references == [operation["reference"]]


def test_create_an_invoice_with_reminders_and_recurrence_then_remind(gateway: Gateway) -> None:
    with gateway.sessions()() as session:
        customer = session.scalars(
            select(models.Customer).where(models.Customer.connection_id == gateway.connection_id)
            .order_by(models.Customer.id)
        ).first()  # fmt: skip
    assert customer is not None
    body = {
        "customer_id": customer.id, "terms": "Net15", "send": "now", "memo": "Retainer",
        "lines": [{"description": "Bookkeeping", "quantity": "1", "unit_price": "450.00"}],
        "reminders": {"enabled": True, "days_before_due": [2], "days_after_due": [3]},
        "recurring": {"frequency": "monthly"},
    }  # fmt: skip
    response = gateway.post("/create_invoice", body, key="inv-1")
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert invoice["status"] == "sent" and invoice["terms"] == "Net15"
    assert (
        invoice["memo"] == "Retainer" and invoice["reference"] == f"papi-{response.headers['Operation-Id']}"
    )
    plan = gateway.get(f"/recurring_invoices/{invoice['recurring_invoice_id']}")
    assert plan.status_code == 200 and plan.json()["frequency"] == "monthly"
    assert invoice["reminder_schedule"] == [-2, 3]
    assert _events(gateway)["invoice.created"] >= 1
    reminded = gateway.post(f"/invoices/{invoice['id']}/remind")
    assert reminded.status_code == 200, reminded.text
    # The reminder joins the invoice's sent log at once, not at the next sync.
    sent = [r for r in gateway.get(f"/invoices/{invoice['id']}").json()["reminders"] if r["kind"] == "manual"]
    assert [r["status"] for r in sent] == ["sent"]
    outbox = gateway.control.get("/outbox", params={"kind": "Email"}).json()
    assert any("eminder" in (m.get("subject") or "") for m in outbox)
    draft = gateway.post(f"/invoices/{invoice['id']}/remind", key="r2")
    assert draft.status_code == 200


def test_list_approvals_across_bills_and_payments(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    payment = gateway.post("/create_payment", {"bill_id": bill.id}).json()
    assert payment["status"] == "pending_approval"
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = gateway.client.get("/approvals", params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                                  headers=gateway.headers).json()  # fmt: skip
        seen.extend(page["data"])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len({a["id"] for a in seen}) == len(seen)
    types = Counter(a["type"] for a in seen)
    assert types["bill"] >= 1 and payment["id"] in {a["id"] for a in seen}
    assert all(a["status"] == "pending" for a in seen)
    only_bills = gateway.client.get(
        "/approvals", params={"type": "bill", "limit": 100}, headers=gateway.headers
    )
    assert {a["type"] for a in only_bills.json()["data"]} == {"bill"}
    assert len(only_bills.json()["data"]) == types["bill"]
    rejected = gateway.client.get(
        "/approvals", params={"status": "rejected", "type": "bill"}, headers=gateway.headers
    )
    assert all(a["bill"]["status"] == "rejected" for a in rejected.json()["data"])


def test_approve_a_payment_as_a_signing_authority(gateway: Gateway, sandbox: str) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    made = gateway.control.post("/mutate", json={"action": "createPayment", "billId": bill.upstream_id,
                                                 "userEmail": _cfo_of(gateway, sandbox, bill), "amount": "5.00"})  # fmt: skip
    assert made.status_code == 200, made.text

    async def resync() -> bool:
        ctx = JobContext.from_settings(gateway.settings, migrate=False)
        try:
            return (await SyncEngine(ctx).sync_connection(gateway.connection_id)).ok
        finally:
            await ctx.aclose()

    assert asyncio.run(resync())
    with gateway.sessions()() as session:
        payment = session.scalars(
            select(models.Payment).where(models.Payment.connection_id == gateway.connection_id,
                                         models.Payment.upstream_id.in_(made.json()["changed"]))
        ).first()  # fmt: skip
    assert payment is not None and payment.status == "pending_approval"
    # The portal keeps no comment on a payment's approval: refused rather than dropped without a word.
    commented = gateway.post(f"/approvals/{payment.id}/approve", {"comment": "ok"}, key="pay-appr")
    assert commented.status_code == 400 and commented.json()["error"]["param"] == "comment"
    approved = gateway.post(f"/approvals/{payment.id}/approve", key="pay-appr")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "scheduled"
    assert gateway.post(f"/approvals/{payment.id}/approve").json()["error"]["code"] == "not_awaiting_approval"


def test_a_cancel_refused_after_an_unknown_outcome_is_not_reported_done(gateway: Gateway) -> None:
    # The first send fails (500, nothing applied); the portal refuses the second (the payment was
    # debited meanwhile). That refusal looks like "done already", but the payment shows no cancel.
    bill = gateway.bill(status="approved", currency="CAD")
    payment = gateway.post("/create_payment", {"bill_id": bill.id, "amount": "50.00"}).json()
    if payment["status"] == "pending_approval":
        approved = gateway.control.post("/mutate", json={"action": "approvePayment", "paymentId": payment["upstream_id"],
                                                         "userEmail": "clerk@northwind-cpa.test"})  # fmt: skip
        assert approved.status_code == 200, approved.text
    gateway.control.post("/clock", json={"advance_hours": 23}).raise_for_status()  # debited at cut-off
    gateway.fault(kind="error", method="POST", pathPattern=r"/cancel$", count=1, status=500)
    response = gateway.post(f"/payments/{payment['id']}/cancel")
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "invalid_state"
    assert [p["status"] for p in gateway.ground_truth(bill.upstream_id)] == ["FundsDebited"]


def test_an_approval_refused_after_an_unknown_outcome_is_not_reported_done(
    gateway: Gateway, sandbox: str
) -> None:
    # Someone else rejected the payment in the portal; our approval's first send fails, the second
    # is refused as decided already: by them, not by us.
    bill = gateway.bill(status="approved", currency="CAD")
    cfo = _cfo_of(gateway, sandbox, bill)
    made = gateway.control.post("/mutate", json={"action": "createPayment", "billId": bill.upstream_id,
                                                 "userEmail": cfo, "amount": "5.00"})  # fmt: skip
    assert made.status_code == 200, made.text
    gateway.sync()
    with gateway.sessions()() as session:
        payment = session.scalars(
            select(models.Payment).where(models.Payment.connection_id == gateway.connection_id,
                                         models.Payment.upstream_id.in_(made.json()["changed"]))
        ).one()  # fmt: skip
    assert payment.status == "pending_approval"
    rejected = gateway.control.post("/mutate", json={"action": "rejectPayment", "paymentId": payment.upstream_id,
                                                     "userEmail": "clerk@northwind-cpa.test"})  # fmt: skip
    assert rejected.status_code == 200, rejected.text
    gateway.fault(kind="error", method="POST", pathPattern=r"/approve$", count=1, status=500)
    response = gateway.post(f"/approvals/{payment.id}/approve")
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] in ("already_decided", "invalid_state")
