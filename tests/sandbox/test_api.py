"""The internal JSON API: auth, envelope, pagination, modifiedSince, shapes, permissions and rules."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sandbox.sandbox_helpers import Portal, login

LIST_PATHS = [
    "/bank-accounts",
    "/approval-policies",
    "/vendors",
    "/customers",
    "/bills",
    "/payments",
    "/invoices",
    "/recurring-invoices",
    "/reminders",
    "/customer-payments",
]
ID_FIELD = {
    "/bank-accounts": "bankAccountId",
    "/approval-policies": "approvalPolicyId",
    "/vendors": "vendorId",
    "/customers": "customerId",
    "/bills": "billId",
    "/payments": "paymentId",
    "/invoices": "invoiceId",
    "/recurring-invoices": "recurringInvoiceId",
    "/reminders": "reminderId",
    "/customer-payments": "customerPaymentId",
}
MONEY = re.compile(rb'"(totalAmount|amount|openBalance|sourceAmount|feeAmount|balanceDue)":-?\d+\.\d\d[,}]')


def walk(portal: Portal, path: str, page_size: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        response = portal.api(
            "GET", portal.company(path), params={"pageNumber": page, "pageSize": page_size, **params}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "pageNumber", "pageSize", "totalCount", "totalPages"}
        items.extend(body["items"])
        if page >= body["totalPages"]:
            assert len(items) == body["totalCount"]
            return items
        page += 1


@pytest.mark.parametrize("path", LIST_PATHS)
def test_every_list_pages_in_stable_order_with_details(portal: Portal, path: str) -> None:
    items = walk(portal, path, page_size=7)
    assert items, f"seed has no {path}"
    keys = [(item["lastModified"], item[ID_FIELD[path]]) for item in items]
    assert keys == sorted(keys)
    assert len({k[1] for k in keys}) == len(keys)
    # modifiedSince is inclusive and returns exactly the tail of the same order.
    pivot = items[len(items) // 2]["lastModified"]
    tail = walk(portal, path, page_size=5, modifiedSince=pivot)
    assert [t[ID_FIELD[path]] for t in tail] == [
        i[ID_FIELD[path]] for i in items if i["lastModified"] >= pivot
    ]
    if path not in ("/reminders",):
        first_id = items[0][ID_FIELD[path]]
        detail = portal.api("GET", portal.company(f"{path}/{first_id}"))
        assert detail.status_code == 200
        assert detail.json() == items[0]


def test_session_companies_users_and_fx(portal: Portal) -> None:
    session = portal.api("GET", "/api/session").json()
    assert session["email"] == "controller@northwind-cpa.test" and session["mfaMethod"] == "Totp"
    company = portal.api("GET", portal.company("")).json()
    assert company["role"] == "Administrator" and "ApprovePayments" in company["permissions"]
    assert {b["currency"] for b in company["plootoInstantBalances"]} == {"CAD", "USD"}
    users = portal.api("GET", portal.company("/users")).json()
    assert {u["role"] for u in users["items"]} == {"Administrator", "CFO", "Accountant", "Viewer", "Custom"}
    fx = portal.api(
        "GET", portal.company("/fx-rates"), params={"sourceCurrency": "CAD", "destinationCurrency": "USD"}
    )
    assert re.search(rb'"exchangeRate":\d+\.\d{9}[,}]', fx.content)
    assert portal.api("GET", portal.company("/fx-rates"), params={"sourceCurrency": "XXX"}).status_code == 400


def test_money_is_two_decimals_and_accounts_are_masked(portal: Portal) -> None:
    raw = portal.api("GET", portal.company("/bills"), params={"pageSize": 50}).content
    assert MONEY.search(raw)
    accounts = portal.api("GET", portal.company("/bank-accounts")).json()["items"]
    for account in accounts:
        assert re.fullmatch(r"\*{5}\d{4}", account["accountNumberMasked"])
        assert "accountNumber" not in account
    vendors = walk(portal, "/vendors", 100)
    for vendor in vendors:
        for method in vendor["paymentMethods"]:
            masked = method["accountNumberMasked"]
            assert masked is None or re.fullmatch(r"\*{5}\d{4}", masked)
    payment = portal.api("GET", portal.company("/payments"), params={"status": "Exchanging"}).json()["items"][
        0
    ]
    assert payment["sourceCurrency"] != payment["destinationCurrency"]
    assert len(str(payment["exchangeRate"]).split(".")[1]) <= 9
    assert re.search(
        rb'"exchangeRate":\d+\.\d{9}',
        portal.api("GET", portal.company(f"/payments/{payment['paymentId']}")).content,
    )


def test_modified_since_returns_only_changes(portal: Portal) -> None:
    portal.advance(advance_minutes=5)
    now = portal.client.get("/__sandbox/clock").json()["now"]
    changed = portal.mutate(action="modifyBills", companyId=portal.company_id, count=3)["changed"]
    created = portal.mutate(action="createBills", companyId=portal.company_id, count=2)["changed"]
    page = portal.api("GET", portal.company("/bills"), params={"modifiedSince": now}).json()
    assert {b["billId"] for b in page["items"]} == set(changed) | set(created)
    assert page["totalCount"] == 5
    later = portal.api(
        "GET", portal.company("/bills"), params={"modifiedSince": "2030-01-01T00:00:00Z"}
    ).json()
    assert later["totalCount"] == 0
    bad = portal.api("GET", portal.company("/bills"), params={"modifiedSince": "yesterday"})
    assert bad.status_code == 400 and bad.json()["errorCode"] == "ValidationFailed"


def test_api_requires_session_and_xsrf_header(client: TestClient) -> None:
    anonymous = client.get("/api/companies")
    assert anonymous.status_code == 401
    body = anonymous.json()
    assert set(body) == {"errorCode", "message", "validationErrors", "traceId"}
    assert anonymous.headers["x-plooto-id"] == body["traceId"] and anonymous.headers["x-via"] == "api"
    headers = login(client, "controller@northwind-cpa.test")
    missing = client.get("/api/companies")
    assert missing.status_code == 403 and missing.json()["errorCode"] == "AntiforgeryTokenInvalid"
    wrong = client.get("/api/companies", headers={"X-XSRF-TOKEN": "nope"})
    assert wrong.status_code == 403
    token = client.get("/api/antiforgery/token").json()["requestToken"]
    assert token == headers["X-XSRF-TOKEN"]
    assert client.get("/api/companies", headers=headers).status_code == 200


def test_unknown_company_and_objects_are_404(portal: Portal) -> None:
    response = portal.api("GET", "/api/companies/nope/bills")
    assert response.status_code == 404 and response.json()["errorCode"] == "CompanyNotFound"
    assert portal.api("GET", portal.company("/bills/nope")).json()["errorCode"] == "NotFound"
    assert portal.api("GET", "/api/no-such-endpoint").json()["errorCode"] == "NotFound"


def test_pagination_parameters_validated(portal: Portal) -> None:
    for params in ({"pageSize": 0}, {"pageSize": 501}, {"pageNumber": 0}, {"pageNumber": "x"}):
        response = portal.api("GET", portal.company("/bills"), params=params)
        assert response.status_code == 400, params
    beyond = portal.api("GET", portal.company("/bills"), params={"pageNumber": 99}).json()
    assert beyond["items"] == [] and beyond["totalCount"] == 30


def test_bill_filters_and_status_coverage(portal: Portal) -> None:
    bills = walk(portal, "/bills", 100)
    assert len(bills) == 30
    statuses = {b["status"] for b in bills}
    assert {
        "ApprovalRequired",
        "Open",
        "PaymentScheduled",
        "PartiallyPaid",
        "Paid",
        "Rejected",
        "Void",
    } <= statuses
    only_open = walk(portal, "/bills", 100, status="Open")
    assert only_open and all(b["status"] == "Open" for b in only_open)
    captured = [b for b in bills if b["capturedDocument"]]
    assert captured and all(
        0 < f["confidence"] <= 1 for f in captured[0]["capturedDocument"]["extractedFields"].values()
    )
    assert any(b["attachments"] for b in bills)
    assert any(b["accountingIds"] and b["accountingIds"]["provider"] == "QuickBooksOnline" for b in bills)


def test_payment_status_coverage(portal: Portal) -> None:
    statuses = {p["status"] for p in walk(portal, "/payments", 200)}
    expected = {
        "ApprovalRequired", "Pending", "FundsDebited", "Clearing", "Exchanging", "Processing", "Completed",
        "OnHold", "Recalled", "Rejected", "Cancelled", "Deleted", "Failed", "Returned",
    }  # fmt: skip
    assert expected <= statuses
    on_hold = walk(portal, "/payments", 200, status="OnHold")[0]
    assert on_hold["displayStatus"] == "On Hold" and "temporarily locked" in on_hold["holdReason"]


def test_invoice_and_receivable_shapes(portal: Portal) -> None:
    invoices = walk(portal, "/invoices", 100)
    statuses = {i["status"] for i in invoices}
    assert {"Draft", "Sent", "Viewed", "PartiallyPaid", "Paid", "Overdue", "Void"} <= statuses
    paid = next(i for i in invoices if i["status"] == "Paid")
    assert paid["balanceDue"] == 0 and paid["amountPaid"] == paid["totalAmount"]
    collected = walk(portal, "/customer-payments", 100)
    assert {"Completed", "Clearing", "Failed"} <= {c["status"] for c in collected}
    assert any(c["matchStatus"] == "Matched" for c in collected)
    reminders = walk(portal, "/reminders", 100)
    assert {"Sent", "Scheduled"} <= {r["status"] for r in reminders}
    recurring = walk(portal, "/recurring-invoices", 100)
    assert {"Active", "Cancelled"} <= {r["status"] for r in recurring}


# -- writes -------------------------------------------------------------------------------------
def first_vendor(portal: Portal, kind: str = "BankAccount", currency: str = "CAD") -> dict[str, Any]:
    vendors = walk(portal, "/vendors", 100)
    return next(
        v
        for v in vendors
        if v["paymentMethods"][0]["type"] == kind
        and v["currency"] == currency
        and not v["displayName"].startswith("Stale")  # that payee's bank returns every payment
    )


def create_bill(portal: Portal, amount: str = "1200.00", **extra: Any) -> dict[str, Any]:
    vendor = extra.pop("vendor", None) or first_vendor(portal)
    body = {
        "vendorId": vendor["vendorId"],
        "billNumber": extra.pop("billNumber", "T-100"),
        "issueDate": "2026-03-01",
        "dueDate": "2026-03-31",
        "lineItems": [{"description": "Widgets", "quantity": 2, "unitPrice": str(Decimal(amount) / 2)}],
        **extra,
    }
    response = portal.api("POST", portal.company("/bills"), json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def test_create_bill_json_and_attachment(portal: Portal) -> None:
    bill = create_bill(portal, memo="from test")
    assert bill["status"] == "Open" and bill["totalAmount"] == 1200 and bill["memo"] == "from test"
    assert b'"totalAmount":1200.00' in portal.api("GET", portal.company(f"/bills/{bill['billId']}")).content
    upload = portal.api(
        "POST",
        portal.company(f"/bills/{bill['billId']}/attachments"),
        files={"file": ("bill.pdf", b"%PDF-1.4 test", "application/pdf")},
    )
    assert upload.status_code == 201 and upload.json()["sizeBytes"] == 13
    again = portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()
    assert again["attachments"][0]["fileName"] == "bill.pdf"
    wrong_type = portal.api(
        "POST",
        portal.company(f"/bills/{bill['billId']}/attachments"),
        files={"file": ("x.exe", b"MZ", "application/x-msdownload")},
    )
    assert wrong_type.status_code == 400


def test_captured_document_becomes_bill_with_ocr_fields(portal: Portal) -> None:
    response = portal.api(
        "POST",
        portal.company("/captured-documents"),
        files={"file": ("scan.pdf", b"%PDF scan 42", "application/pdf")},
    )
    assert response.status_code == 201
    bill = response.json()
    assert bill["source"] == "Capture"
    fields = bill["capturedDocument"]["extractedFields"]
    assert set(fields) == {"vendorName", "billNumber", "issueDate", "dueDate", "totalAmount", "currency"}
    assert Decimal(str(fields["totalAmount"]["value"])) == Decimal(str(bill["totalAmount"]))


def test_create_bill_validation_errors(portal: Portal) -> None:
    vendor = first_vendor(portal)
    missing = portal.api("POST", portal.company("/bills"), json={"vendorId": vendor["vendorId"]})
    assert missing.status_code == 400
    fields = {e["field"] for e in missing.json()["validationErrors"]}
    assert {"billNumber", "issueDate", "dueDate", "lineItems"} <= fields
    too_precise = portal.api(
        "POST",
        portal.company("/bills"),
        json={
            "vendorId": vendor["vendorId"], "billNumber": "X", "issueDate": "2026-03-01", "dueDate": "2026-03-02",
            "lineItems": [{"description": "a", "amount": 10.005}],
        },
    )  # fmt: skip
    assert too_precise.status_code == 400
    backwards = portal.api(
        "POST",
        portal.company("/bills"),
        json={
            "vendorId": vendor["vendorId"], "billNumber": "X", "issueDate": "2026-03-05", "dueDate": "2026-03-01",
            "lineItems": [{"description": "a", "amount": 10}],
        },
    )  # fmt: skip
    assert backwards.status_code == 422


def test_roles_enforced_on_writes(client: TestClient, portal: Portal) -> None:
    slug = "maple-leaf-bakery-ltd"
    bill = create_bill(portal)
    viewer_client = TestClient(client.app)
    viewer = Portal(viewer_client, login(viewer_client, f"viewer@{slug}.test"), portal.company_id)
    assert viewer.api("GET", viewer.company("/bills")).status_code == 200
    denied = viewer.api("POST", viewer.company("/bills"), json={})
    assert denied.status_code == 403 and denied.json()["errorCode"] == "PermissionDenied"
    accountant_client = TestClient(client.app)
    accountant = Portal(
        accountant_client, login(accountant_client, f"accountant@{slug}.test"), portal.company_id
    )
    cannot_approve = accountant.api("POST", accountant.company(f"/bills/{bill['billId']}/approve"), json={})
    assert cannot_approve.status_code == 403
    # Company users only reach their own company.
    other_company = next(
        c for c in portal.api("GET", "/api/companies").json()["items"] if c["companyId"] != portal.company_id
    )
    assert viewer.api("GET", f"/api/companies/{other_company['companyId']}/bills").status_code == 404
    custom_client = TestClient(client.app)
    custom = Portal(custom_client, login(custom_client, f"custom@{slug}.test"), portal.company_id)
    assert custom.api("POST", custom.company("/invoices"), json={}).status_code == 403


def test_bill_sequential_approval_levels_and_self_approval(client: TestClient, portal: Portal) -> None:
    slug = "maple-leaf-bakery-ltd"
    bill = create_bill(portal, amount="30000.00", billNumber="BIG-1")
    assert bill["status"] == "ApprovalRequired"
    levels = {(s["level"], s["status"]) for s in bill["approvalSteps"]}
    assert (1, "ApprovalMandatory") in levels and (2, "AwaitingPreviousLevel") in levels
    # The controller created it: he is excluded from level 2, and cannot approve anything.
    self_approval = portal.api("POST", portal.company(f"/bills/{bill['billId']}/approve"), json={})
    assert self_approval.status_code == 422 and self_approval.json()["errorCode"] == "SelfApprovalNotAllowed"
    pay_early = portal.api(
        "POST",
        portal.company("/payments"),
        json={
            "billId": bill["billId"],
            "amount": 10,
            "debitBankAccountId": "x",
            "requestedDebitDate": "2026-03-03",
        },
    )
    assert pay_early.status_code in (404, 422)
    cfo_client = TestClient(client.app)
    cfo = Portal(cfo_client, login(cfo_client, f"cfo@{slug}.test"), portal.company_id)
    after_level_1 = cfo.api(
        "POST", cfo.company(f"/bills/{bill['billId']}/approve"), json={"comment": "ok"}
    ).json()
    assert after_level_1["status"] == "ApprovalRequired"
    again = cfo.api("POST", cfo.company(f"/bills/{bill['billId']}/approve"), json={})
    assert again.status_code == 409 and again.json()["errorCode"] == "AlreadyDecided"
    custom_client = TestClient(client.app)
    custom = Portal(custom_client, login(custom_client, f"custom@{slug}.test"), portal.company_id)
    final = custom.api("POST", custom.company(f"/bills/{bill['billId']}/approve"), json={}).json()
    assert final["status"] == "Open"
    assert [s["status"] for s in final["approvalSteps"] if s["level"] == 1].count("Approved") == 1
    done = custom.api("POST", custom.company(f"/bills/{bill['billId']}/approve"), json={})
    assert done.status_code == 409 and done.json()["errorCode"] == "InvalidState"


def test_bill_rejection(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="8000.00", billNumber="REJ-1")
    cfo_client = TestClient(client.app)
    cfo = Portal(cfo_client, login(cfo_client, "cfo@maple-leaf-bakery-ltd.test"), portal.company_id)
    rejected = cfo.api(
        "POST", cfo.company(f"/bills/{bill['billId']}/reject"), json={"comment": "no PO"}
    ).json()
    assert rejected["status"] == "Rejected"
    assert any(s["status"] == "Rejected" and s["comment"] == "no PO" for s in rejected["approvalSteps"])


def test_new_bill_syncs_to_accounting_within_15_minutes(portal: Portal) -> None:
    bill = create_bill(portal, billNumber="SYNC-1")
    assert bill["accountingIds"] is None
    portal.advance(advance_minutes=16)
    synced = portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()
    assert synced["accountingIds"]["provider"] == "QuickBooksOnline"
    assert synced["accountingIds"]["syncStatus"] == "Synced"
    assert synced["lastModified"] > bill["lastModified"]
