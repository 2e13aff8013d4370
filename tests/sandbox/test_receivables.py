"""Receivables: invoices (send now, scheduled, reminders, recurring), customer payments and matching."""

from __future__ import annotations

from typing import Any

from sandbox.sandbox_helpers import Portal
from sandbox.test_api import walk


def customer(portal: Portal, pad: str = "Active", card: bool | None = None) -> dict[str, Any]:
    for item in walk(portal, "/customers", 100):
        if item["padAgreementStatus"] == pad and (
            card is None or (item["cardOnFileMasked"] is not None) == card
        ):
            return item
    raise AssertionError("no such customer in the seed")


def invoice_body(customer_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "customerId": customer_id,
        "terms": "Net15",
        "lineItems": [{"description": "Catering", "quantity": 3, "unitPrice": "100.00"}],
        **extra,
    }


def create_invoice(portal: Portal, **extra: Any) -> dict[str, Any]:
    response = portal.api(
        "POST", portal.company("/invoices"), json=invoice_body(customer(portal)["customerId"], **extra)
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def test_send_now_emails_customer_and_schedules_reminders(portal: Portal) -> None:
    invoice = create_invoice(portal)
    assert (
        invoice["status"] == "Sent" and invoice["totalAmount"] == 300 and invoice["dueDate"] == "2026-03-17"
    )
    assert invoice["invoiceNumber"].startswith("INV-")
    outbox = portal.client.get("/__sandbox/outbox", params={"kind": "Email"}).json()
    assert outbox[-1]["subject"] == f"Invoice {invoice['invoiceNumber']}"
    reminders = walk(portal, "/reminders", 100, invoiceId=invoice["invoiceId"])
    assert sorted(r["kind"] for r in reminders) == ["AfterDue", "AfterDue", "BeforeDue"]
    assert all(r["status"] == "Scheduled" for r in reminders)
    portal.advance(set="2026-03-14T14:30:00Z")  # 3 days before due, after 09:00 Toronto
    sent = [
        r for r in walk(portal, "/reminders", 100, invoiceId=invoice["invoiceId"]) if r["status"] == "Sent"
    ]
    assert [r["kind"] for r in sent] == ["BeforeDue"]
    portal.advance(set="2026-03-18T14:30:00Z")
    overdue = portal.api("GET", portal.company(f"/invoices/{invoice['invoiceId']}")).json()
    assert overdue["status"] == "Overdue"
    manual = portal.api("POST", portal.company(f"/invoices/{invoice['invoiceId']}/reminders"))
    assert (
        manual.status_code == 201 and manual.json()["kind"] == "Manual" and manual.json()["status"] == "Sent"
    )


def test_customer_payment_by_pad_marks_invoice_paid_with_matching(portal: Portal) -> None:
    payer = customer(portal, pad="Active")
    response = portal.api("POST", portal.company("/invoices"), json=invoice_body(payer["customerId"]))
    invoice = response.json()
    collected = portal.api(
        "POST",
        portal.company("/customer-payments"),
        json={"customerId": payer["customerId"], "amount": "300.00", "method": "PreAuthorizedDebit"},
    )
    assert collected.status_code == 201, collected.text
    payment = collected.json()
    # Automatic matching prefers the open invoice whose balance equals the amount.
    assert payment["allocations"] == [{"invoiceId": invoice["invoiceId"], "amount": 300}]
    assert (
        payment["matchStatus"] == "Matched" and payment["feeAmount"] == 0.5 and payment["status"] == "Pending"
    )
    portal.advance(advance_days=1)
    assert portal.api("GET", portal.company(f"/customer-payments/{payment['customerPaymentId']}")).json()[
        "status"
    ] in (
        "FundsDebited",
        "Clearing",
    )
    portal.advance(advance_days=2)
    done = portal.api("GET", portal.company(f"/customer-payments/{payment['customerPaymentId']}")).json()
    assert done["status"] == "Completed"
    paid = portal.api("GET", portal.company(f"/invoices/{invoice['invoiceId']}")).json()
    assert paid["status"] == "Paid" and paid["balanceDue"] == 0


def test_card_payment_partial_then_paid(portal: Portal) -> None:
    payer = customer(portal, card=True)
    invoice = portal.api("POST", portal.company("/invoices"), json=invoice_body(payer["customerId"])).json()
    portal.mutate(action="customerPays", invoiceId=invoice["invoiceId"], amount="100.00", method="Card")
    portal.advance(advance_days=2)
    partial = portal.api("GET", portal.company(f"/invoices/{invoice['invoiceId']}")).json()
    assert partial["status"] == "PartiallyPaid" and partial["balanceDue"] == 200
    card = portal.api("POST", portal.company("/customer-payments"), json={
        "customerId": payer["customerId"], "amount": "200.00", "method": "Card", "invoiceIds": [invoice["invoiceId"]],
    }).json()  # fmt: skip
    assert card["feeAmount"] == 6.1  # 2.9 % + 0.30
    portal.advance(advance_days=2)
    assert portal.api("GET", portal.company(f"/invoices/{invoice['invoiceId']}")).json()["status"] == "Paid"


def test_scheduled_and_draft_invoices(portal: Portal) -> None:
    scheduled = create_invoice(portal, send="Scheduled", scheduledSendDate="2026-03-04")
    assert scheduled["status"] == "Draft" and scheduled["scheduledSendDate"] == "2026-03-04"
    draft = create_invoice(portal, send="Draft")
    portal.advance(advance_days=2)
    assert portal.api("GET", portal.company(f"/invoices/{scheduled['invoiceId']}")).json()["status"] == "Sent"
    assert portal.api("GET", portal.company(f"/invoices/{draft['invoiceId']}")).json()["status"] == "Draft"
    sent = portal.api("POST", portal.company(f"/invoices/{draft['invoiceId']}/send")).json()
    assert sent["status"] == "Sent"
    portal.mutate(action="viewInvoice", invoiceId=draft["invoiceId"])
    assert portal.api("GET", portal.company(f"/invoices/{draft['invoiceId']}")).json()["status"] == "Viewed"
    voided = portal.api("POST", portal.company(f"/invoices/{draft['invoiceId']}/void")).json()
    assert voided["status"] == "Void"
    missing_date = portal.api(
        "POST",
        portal.company("/invoices"),
        json=invoice_body(customer(portal)["customerId"], send="Scheduled"),
    )
    assert missing_date.status_code == 400


def test_recurring_invoice_issues_every_period(portal: Portal) -> None:
    first = create_invoice(portal, recurring={"frequency": "Weekly"})
    plan_id = first["recurringInvoiceId"]
    plan = portal.api("GET", portal.company(f"/recurring-invoices/{plan_id}")).json()
    assert plan["status"] == "Active" and plan["nextIssueDate"] == "2026-03-09"
    portal.advance(advance_days=10)
    plan = portal.api("GET", portal.company(f"/recurring-invoices/{plan_id}")).json()
    assert len(plan["invoiceIds"]) == 3 and plan["nextIssueDate"] == "2026-03-23"
    cancelled = portal.api("POST", portal.company(f"/recurring-invoices/{plan_id}/cancel")).json()
    assert cancelled["status"] == "Cancelled" and cancelled["nextIssueDate"] is None


def test_pad_requires_agreement(portal: Portal) -> None:
    payer = customer(portal, pad="None")
    response = portal.api(
        "POST",
        portal.company("/customer-payments"),
        json={"customerId": payer["customerId"], "amount": "10.00", "method": "PreAuthorizedDebit"},
    )
    assert response.status_code == 422


def test_custom_reminder_schedule_with_due_day(portal: Portal) -> None:
    invoice = create_invoice(
        portal, reminderSchedule={"enabled": True, "daysBeforeDue": [0, 2], "daysAfterDue": []}
    )
    kinds = sorted(r["kind"] for r in walk(portal, "/reminders", 100, invoiceId=invoice["invoiceId"]))
    assert kinds == ["BeforeDue", "OnDue"]
    silent = create_invoice(portal, reminderSchedule={"enabled": False})
    assert walk(portal, "/reminders", 100, invoiceId=silent["invoiceId"]) == []
