"""Dates beyond the portal's reach are a 400 ValidationFailed naming the field, never a 500, and
nothing is created: debits and scheduled sends at most a year ahead, documents within ten years."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from sandbox.sandbox_helpers import Portal
from sandbox.test_api import create_bill, first_vendor
from sandbox.test_payments import pay
from sandbox.test_receivables import customer, invoice_body

TODAY = date(2026, 3, 2)  # the sandbox clock's start
LATEST_DEBIT = TODAY + timedelta(days=365)
EARLIEST_DOCUMENT, LATEST_DOCUMENT = TODAY - timedelta(days=3652), TODAY + timedelta(days=3652)
FAR = ["9999-12-31", "9999-12-30", "3000-01-01", (LATEST_DEBIT + timedelta(days=1)).isoformat()]


def refused(response: httpx.Response, field: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert body["errorCode"] == "ValidationFailed" and body["traceId"]
    assert [e["field"] for e in body["validationErrors"]] == [field]
    return body


def count(portal: Portal, path: str) -> int:
    total: int = portal.api("GET", portal.company(path), params={"pageSize": 1}).json()["totalCount"]
    return total


@pytest.mark.parametrize("day", FAR)
def test_a_debit_date_more_than_a_year_ahead(portal: Portal, day: str) -> None:
    bill = create_bill(portal, amount="100.00")
    body = refused(pay(portal, bill, "1.00", requestedDebitDate=day), "requestedDebitDate")
    assert LATEST_DEBIT.isoformat() in body["message"]
    truth = portal.client.get("/__sandbox/ground-truth/payments", params={"bill": bill["billId"]}).json()
    assert truth == []
    mutated = portal.client.post("/__sandbox/mutate", json={
        "action": "createPayment", "billId": bill["billId"], "userEmail": "clerk@northwind-cpa.test",
        "amount": "1.00", "requestedDebitDate": day,
    })  # fmt: skip
    refused(mutated, "requestedDebitDate")


def test_a_debit_date_a_year_ahead_is_accepted(portal: Portal) -> None:
    bill = create_bill(portal, amount="100.00")
    made = pay(portal, bill, "1.00", requestedDebitDate=LATEST_DEBIT.isoformat())
    assert made.status_code == 201, made.text
    assert made.json()["requestedDebitDate"] == LATEST_DEBIT.isoformat()
    garbled = portal.client.post("/__sandbox/mutate", json={
        "action": "createPayment", "billId": bill["billId"], "userEmail": "clerk@northwind-cpa.test",
        "amount": "1.00", "requestedDebitDate": "next tuesday",
    })  # fmt: skip
    refused(garbled, "requestedDebitDate")


@pytest.mark.parametrize("field", ["issueDate", "dueDate"])
@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", (EARLIEST_DOCUMENT - timedelta(days=1)).isoformat(),
                                 (LATEST_DOCUMENT + timedelta(days=1)).isoformat()])  # fmt: skip
def test_bill_dates_out_of_reach(portal: Portal, field: str, day: str) -> None:
    before = count(portal, "/bills")
    body = {
        "vendorId": first_vendor(portal)["vendorId"], "billNumber": "FAR-1", "issueDate": "2026-03-01",
        "dueDate": "2026-03-31", "lineItems": [{"description": "Widgets", "amount": "10.00"}], field: day,
    }  # fmt: skip
    refused(portal.api("POST", portal.company("/bills"), json=body), field)
    assert count(portal, "/bills") == before


def test_bill_dates_at_the_bounds_are_accepted(portal: Portal) -> None:
    bill = create_bill(portal, issueDate=EARLIEST_DOCUMENT.isoformat(), dueDate=LATEST_DOCUMENT.isoformat())
    assert (bill["issueDate"], bill["dueDate"]) == (
        EARLIEST_DOCUMENT.isoformat(),
        LATEST_DOCUMENT.isoformat(),
    )


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"dueDate": "9999-12-31"}, "dueDate"),
        ({"dueDate": "0001-01-02", "issueDate": "0001-01-01"}, "issueDate"),
        ({"issueDate": "9999-12-31", "recurring": {"frequency": "Monthly"}}, "issueDate"),
        ({"recurring": {"frequency": "Weekly", "endDate": "9999-12-31"}}, "recurring.endDate"),
        ({"send": "Scheduled", "scheduledSendDate": "9999-12-31"}, "scheduledSendDate"),
        ({"send": "Scheduled", "scheduledSendDate": (LATEST_DEBIT + timedelta(days=1)).isoformat()},
         "scheduledSendDate"),
    ],
)  # fmt: skip
def test_invoice_dates_out_of_reach(portal: Portal, extra: dict[str, Any], field: str) -> None:
    before = count(portal, "/invoices"), count(portal, "/recurring-invoices")
    body = invoice_body(customer(portal)["customerId"], **extra)
    refused(portal.api("POST", portal.company("/invoices"), json=body), field)
    assert (count(portal, "/invoices"), count(portal, "/recurring-invoices")) == before


def test_invoice_dates_within_reach_are_accepted(portal: Portal) -> None:
    body = invoice_body(customer(portal)["customerId"], send="Scheduled", scheduledSendDate=LATEST_DEBIT.isoformat(),
                        dueDate=LATEST_DOCUMENT.isoformat(),
                        recurring={"frequency": "Monthly", "endDate": LATEST_DOCUMENT.isoformat()})  # fmt: skip
    made = portal.api("POST", portal.company("/invoices"), json=body)
    assert made.status_code == 201, made.text
    assert made.json()["scheduledSendDate"] == LATEST_DEBIT.isoformat()


def test_a_collection_more_than_a_year_ahead(portal: Portal) -> None:
    payer = customer(portal, pad="Active")
    before = count(portal, "/customer-payments")
    for day in ("9999-12-31", (LATEST_DEBIT + timedelta(days=1)).isoformat()):
        response = portal.api("POST", portal.company("/customer-payments"), json={
            "customerId": payer["customerId"], "amount": "10.00", "method": "PreAuthorizedDebit", "debitDate": day,
        })  # fmt: skip
        refused(response, "debitDate")
    assert count(portal, "/customer-payments") == before
