"""How writes end when the portal fails part-way: re-sends spaced out, read-backs that write,
keys released when nothing was sent, and keys answered 202 that replay the write's end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from plooto_api.services import writes
from plooto_api.services.connections import change_state
from plooto_api.store import models
from support.portal import lock_login_from_elsewhere

from .conftest import CONTROLLER, Gateway
from .test_actions import BILL, _vendor


def test_a_failed_attachment_upload_during_read_back_ends_the_write(gateway: Gateway) -> None:
    # The bill is made, its attachment's upload fails (503) on the first send and again on the
    # read-back that uploads it once more: the write goes on and ends with the attachment, instead
    # of the read-back's failure escaping the job and leaving the operation "running".
    gateway.fault(kind="error", method="POST", pathPattern=r"/attachments$", count=2, status=503)
    response = gateway.client.post(
        "/create_bill", headers={**gateway.headers, "Idempotency-Key": "att-err-1"},
        data={"bill": json.dumps({**BILL, "number": "MP-ERR", "vendor_id": _vendor(gateway).id})},
        files={"file": ("mp-err.pdf", b"%PDF-1.4 test", "application/pdf")},
    )  # fmt: skip
    assert response.status_code in (201, 202), response.text
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    assert operation["attempts"] == 2  # the bill's send, and the read-back's upload that failed
    bill = operation["result"]["object"]
    assert bill["number"] == "MP-ERR" and [a["file_name"] for a in bill["attachments"]] == ["mp-err.pdf"]


def test_a_send_the_portal_says_it_did_not_apply_is_repeated_after_a_pause(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 503 in the portal's own envelope: nothing applied. Sending again at once used up every send
    # within a fifth of a second, so a moment's outage failed the write for good.
    delays: list[int] = []
    spaced = writes.resend_delay

    def resend_delay(sends: int) -> float:
        delays.append(sends)
        return 0.0

    monkeypatch.setattr(writes, "resend_delay", resend_delay)
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="error", method="POST", pathPattern=r"/payments$", count=2, status=503)
    response = gateway.post("/create_payment", {"bill_id": bill.id})
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    assert delays == [1, 2]
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
    assert all(0.3 <= spaced(n) <= writes.RESEND_DELAY_MAX_SECONDS for n in range(1, 6))


def test_a_write_refused_because_the_login_is_locked_keeps_no_answer(gateway: Gateway) -> None:
    asyncio.run(lock_login_from_elsewhere(gateway.sandbox, gateway.control, CONTROLLER))
    bill = gateway.bill(status="approved", currency="CAD")
    refused = gateway.post("/create_payment", {"bill_id": bill.id}, key="locked-1")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "connection_requires_action"
    # The write's refused sign-in marks the connection at once (not at the next sync), and the
    # next write does not try the login again while the portal's lock lasts.
    assert gateway.get(f"/connections/{gateway.connection_id}").json()["state"] == "locked"
    again = gateway.post("/create_payment", {"bill_id": bill.id}, key="locked-2")
    assert again.status_code == 409, again.text
    assert "locked this login until" in again.json()["error"]["message"]
    gateway.control.post("/clock", json={"advance_minutes": 20}).raise_for_status()  # the lock ends
    paid = gateway.post("/create_payment", {"bill_id": bill.id}, key="locked-1")
    assert paid.status_code == 201, paid.text
    assert paid.headers.get("Idempotent-Replayed") is None
    replay = gateway.post("/create_payment", {"bill_id": bill.id}, key="locked-1")
    assert (replay.status_code, replay.json()["id"]) == (201, paid.json()["id"])
    assert len(gateway.ground_truth(bill.upstream_id)) == 1


def test_a_reminder_confirmed_by_read_back_joins_its_invoice(gateway: Gateway) -> None:
    invoices = gateway.get("/invoices?status=overdue&limit=1").json()["data"]
    assert invoices, "the seed has overdue invoices"
    invoice: dict[str, Any] = invoices[0]
    manual_before = sum(r["kind"] == "manual" for r in invoice["reminders"])
    gateway.fault(kind="drop_response", method="POST", pathPattern=r"/reminders$", count=1)
    response = gateway.post(f"/invoices/{invoice['id']}/remind")
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    reminders = gateway.get(f"/invoices/{invoice['id']}").json()["reminders"]
    assert sum(r["kind"] == "manual" for r in reminders) == manual_before + 1
    emails = gateway.control.get("/outbox", params={"kind": "Email"}).json()
    assert sum("eminder" in (e.get("subject") or "") for e in emails) >= 1


def test_a_portal_refusal_names_the_field_as_the_request_does(gateway: Gateway) -> None:
    vendor = _vendor(gateway)
    bill = {**BILL, "vendor_id": vendor.id, "number": "PREC-1",
            "lines": [{"description": "ok", "amount": "5.00"}, {"description": "credit", "amount": "-10.00"}]}  # fmt: skip
    refused = gateway.post("/create_bill", bill)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "lines"  # the portal says lineItems: the total is not positive
    customer = gateway.get("/customers?limit=1").json()["data"][0]
    invoice = {"customer_id": customer["id"], "lines": [{"description": "Service", "amount": "10.00"}],
               "issue_date": "2026-03-10", "due_date": "2026-03-01"}  # fmt: skip
    refused = gateway.post("/create_invoice", invoice)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "due_date"  # the portal says dueDate


def test_what_the_portal_would_refuse_is_a_400_before_anything_is_recorded(gateway: Gateway) -> None:
    # A line finer than cents, or a reminder out of the portal's range, was recorded and sent, and
    # came back as the portal's 422 with an operation left behind.
    vendor = _vendor(gateway)
    customer = gateway.get("/customers?limit=1").json()["data"][0]
    with gateway.sessions()() as session:
        operations_before = session.scalar(select(func.count()).select_from(models.Operation))
    line = {"description": "Service", "amount": "10.00"}
    cases = [
        ("/create_bill", {**BILL, "vendor_id": vendor.id, "number": "PREC-2",
                          "lines": [line, {"description": "too precise", "amount": "1.005"}]}, "lines.1.amount"),
        ("/create_bill", {**BILL, "vendor_id": vendor.id, "number": "N" * 65}, "number"),
        ("/create_invoice", {"customer_id": customer["id"], "lines": [{"description": "x", "unit_price": "10.005"}]},
         "lines.0.unit_price"),
        ("/create_invoice", {"customer_id": customer["id"], "lines": [{**line, "quantity": "0"}]}, "lines.0.quantity"),
        ("/create_invoice", {"customer_id": customer["id"], "lines": [{"description": "no price"}]}, "lines.0"),
        ("/create_invoice", {"customer_id": customer["id"], "lines": [line], "reminders": {"days_before_due": [-3]}},
         "reminders.days_before_due.0"),
        ("/create_invoice", {"customer_id": customer["id"], "lines": [line], "reminders": {"days_after_due": [121]}},
         "reminders.days_after_due.0"),
    ]  # fmt: skip
    for path, body, param in cases:
        refused = gateway.post(path, body, key=f"limits-{param}")
        assert refused.status_code == 400, (param, refused.text)
        assert (
            refused.json()["error"]["code"] == "invalid_request" and refused.json()["error"]["param"] == param
        )
    with gateway.sessions()() as session:
        assert session.scalar(select(func.count()).select_from(models.Operation)) == operations_before


def test_request_field_maps_each_part_of_a_portal_path() -> None:
    from plooto_api.upstream import request_field

    assert request_field("payment", "requestedDebitDate") == "scheduled_for"
    assert request_field("invoice", "reminderSchedule.daysAfterDue.2") == "reminders.days_after_due.2"
    assert request_field("bill", "somethingNew") == "somethingNew"  # unknown: as the portal names it
    assert request_field("bill", None) is None


def test_a_write_on_a_login_waiting_for_a_new_password_is_refused_before_anything_is_sent(
    gateway: Gateway,
) -> None:
    # Signing in with the password the portal refused would count towards its lockout.
    with gateway.sessions().begin() as session:
        connection = session.get(models.Connection, gateway.connection_id)
        assert connection is not None
        change_state(session, connection, "requires_action", reason="password")
    bill = gateway.bill(status="approved", currency="CAD")
    refused = gateway.post("/create_payment", {"bill_id": bill.id}, key="waiting-1")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "connection_requires_action"
    assert "waiting for a new password" in error["message"]
    assert "Operation-Id" not in refused.headers  # nothing recorded, nothing to send
    with gateway.sessions().begin() as session:
        connection = session.get(models.Connection, gateway.connection_id)
        assert connection is not None
        change_state(session, connection, "healthy", detail={"credentials_replaced": True})
    paid = gateway.post("/create_payment", {"bill_id": bill.id}, key="waiting-1")  # the key was kept free
    assert paid.status_code == 201, paid.text


def test_an_invoice_s_options_that_contradict_each_other_are_refused(gateway: Gateway) -> None:
    # Each was carried out: a plan ending before its first invoice, a send date dropped from an
    # invoice sent at once, the due-day reminder sent twice; and a remind's body ignored.
    customer = gateway.get("/customers?limit=1").json()["data"][0]
    base = {"customer_id": customer["id"], "lines": [{"description": "Service", "amount": "10.00"}],
            "issue_date": "2026-03-18"}  # fmt: skip
    cases = [
        ({"recurring": {"frequency": "weekly", "end_date": "2026-01-01"}}, "recurring.end_date"),
        ({"send": "now", "scheduled_send_date": "2026-03-25"}, "scheduled_send_date"),
        ({"reminders": {"days_before_due": [0], "days_after_due": [0]}}, "reminders.days_after_due"),
        ({"reminders": {"days_after_due": [3, 3]}}, "reminders.days_after_due"),
    ]
    with gateway.sessions()() as session:
        operations_before = session.scalar(select(func.count()).select_from(models.Operation))
    for extra, param in cases:
        refused = gateway.post("/create_invoice", {**base, **extra}, key=f"contradicts-{param}")
        assert refused.status_code == 400, (param, refused.text)
        assert refused.json()["error"]["param"] == param, refused.text
    invoice = next(i for i in gateway.get("/invoices?status=sent&limit=1").json()["data"])
    for body in ({"foo": 1}, "not json"):
        sent = gateway.client.post(f"/invoices/{invoice['id']}/remind", headers=gateway.headers,
                                   content=body if isinstance(body, str) else json.dumps(body))  # fmt: skip
        assert sent.status_code == 400 and sent.json()["error"]["code"] == "invalid_request", sent.text
    with gateway.sessions()() as session:
        assert session.scalar(select(func.count()).select_from(models.Operation)) == operations_before
    fine = gateway.post(
        "/create_invoice", {**base, "reminders": {"days_before_due": [0], "days_after_due": [1]}}
    )
    assert fine.status_code == 201, fine.text
