"""Payments: portal rules on creation, k-of-N approval, and the rail lifecycle driven by the clock."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi.testclient import TestClient

from plooto_sandbox.business_days import CANADA, UNITED_STATES
from sandbox.sandbox_helpers import Portal, login
from sandbox.test_api import create_bill, first_vendor, walk

SLUG = "maple-leaf-bakery-ltd"


def account(portal: Portal, name: str) -> dict[str, Any]:
    accounts = portal.api("GET", portal.company("/bank-accounts")).json()["items"]
    return next(a for a in accounts if a["name"] == name)


def pay(
    portal: Portal, bill: dict[str, Any], amount: Any, account_name: str = "Main Account", **extra: Any
) -> Any:
    body = {
        "billId": bill["billId"],
        "amount": amount,
        "debitBankAccountId": account(portal, account_name)["bankAccountId"],
        "requestedDebitDate": extra.pop("requestedDebitDate", "2026-03-02"),
        **extra,
    }
    return portal.api("POST", portal.company("/payments"), json=body)


def cfo(client: TestClient, portal: Portal) -> Portal:
    second = TestClient(client.app)
    return Portal(second, login(second, f"cfo@{SLUG}.test"), portal.company_id)


def get_payment(portal: Portal, payment_id: str) -> dict[str, Any]:
    result: dict[str, Any] = portal.api("GET", portal.company(f"/payments/{payment_id}")).json()
    return result


def test_eft_payment_from_approval_to_completed(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="1000.00")
    created = pay(portal, bill, "1000.00", memo="March run", externalReference="gw-123")
    assert created.status_code == 201, created.text
    payment = created.json()
    assert payment["status"] == "ApprovalRequired" and payment["displayStatus"] == "Approval Required"
    assert payment["paymentMethod"] == "Eft" and payment["feeAmount"] == 0.5 and payment["exchangeRate"] == 1
    assert payment["memo"] == "March run" and payment["externalReference"] == "gw-123"
    assert payment["estimatedArrivalDate"] == "2026-03-04"
    found = portal.api("GET", portal.company("/payments"), params={"externalReference": "gw-123"}).json()
    assert [p["paymentId"] for p in found["items"]] == [payment["paymentId"]]
    assert (
        portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()["status"] == "PaymentScheduled"
    )
    # The initiator cannot sign his own payment.
    own = portal.api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
    assert own.status_code == 422 and own.json()["errorCode"] == "SelfApprovalNotAllowed"
    approved = (
        cfo(client, portal)
        .api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
        .json()
    )
    assert approved["status"] == "Pending" and approved["scheduledDebitDate"] == "2026-03-02"
    portal.advance(advance_hours=6)  # 15:00 Toronto: the EFT cut-off, when debits are submitted
    debited = get_payment(portal, payment["paymentId"])
    assert debited["status"] == "FundsDebited" and debited["debitedDate"] == "2026-03-02"
    portal.advance(advance_days=1)
    assert get_payment(portal, payment["paymentId"])["status"] == "Clearing"
    portal.advance(advance_days=1)
    done = get_payment(portal, payment["paymentId"])
    assert done["status"] == "Completed" and done["completedDate"] == "2026-03-04"
    final_bill = portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()
    assert final_bill["status"] == "Paid" and final_bill["openBalance"] == 0
    truth = portal.client.get("/__sandbox/ground-truth/payments", params={"bill": bill["billId"]}).json()
    assert [p["status"] for p in truth] == ["Completed"]


def test_nsf_fails_and_bad_payee_account_returns(client: TestClient, portal: Portal) -> None:
    main = account(portal, "Main Account")
    portal.mutate(action="setNsf", bankAccountId=main["bankAccountId"], value=True)
    bill = create_bill(portal, amount="500.00", billNumber="NSF-1")
    payment = pay(portal, bill, "500.00").json()
    cfo(client, portal).api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
    portal.advance(advance_hours=7)
    failed = get_payment(portal, payment["paymentId"])
    assert failed["status"] == "Failed" and failed["failureReason"] == "InsufficientFunds"
    assert portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()["openBalance"] == 500
    portal.mutate(action="setNsf", bankAccountId=main["bankAccountId"], value=False)

    vendor = first_vendor(portal)
    portal.mutate(action="setPayeeReturn", vendorId=vendor["vendorId"], reason="IncorrectAccountHolderName")
    bill = create_bill(portal, amount="300.00", billNumber="RET-1", vendor=vendor)
    payment = pay(portal, bill, "300.00", requestedDebitDate="2026-03-03").json()
    cfo(client, portal).api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
    portal.advance(advance_days=4)
    returned = get_payment(portal, payment["paymentId"])
    assert returned["status"] == "Returned" and returned["failureReason"] == "IncorrectAccountHolderName"
    statuses = [e["description"] for e in returned["auditTrail"]]
    assert any("Funds" in s or "FundsDebited" in s for s in statuses)


def test_partial_payments_track_open_balance(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="900.00", billNumber="PART-1")
    first = pay(portal, bill, "400.00").json()
    after_first = portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()
    assert after_first["status"] == "PartiallyPaid" and after_first["openBalance"] == 500
    too_much = pay(portal, bill, "500.01")
    assert too_much.status_code == 422 and too_much.json()["errorCode"] == "AmountExceedsOpenBalance"
    second = pay(portal, bill, "500.00")
    assert second.status_code == 201
    cancelled = portal.api("POST", portal.company(f"/payments/{first['paymentId']}/cancel")).json()
    assert cancelled["status"] == "Cancelled"
    deleted = portal.api("DELETE", portal.company(f"/payments/{second.json()['paymentId']}")).json()
    assert deleted["status"] == "Deleted"
    assert portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()["openBalance"] == 900
    truth = portal.client.get("/__sandbox/ground-truth/payments", params={"bill": bill["billId"]}).json()
    assert sorted(p["status"] for p in truth) == ["Cancelled", "Deleted"]


def test_cut_offs_and_outside_business_hours(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="250.00", billNumber="CUT-1")
    past = pay(portal, bill, "10.00", requestedDebitDate="2026-02-27")
    assert past.status_code == 422 and past.json()["errorCode"] == "DebitDateInPast"
    payment = pay(portal, bill, "100.00").json()  # requested today, 09:00: before the cut-off
    portal.advance(advance_hours=7)  # 16:00 Toronto, after the EFT cut-off
    late = pay(portal, bill, "50.00")
    assert late.status_code == 422 and late.json()["errorCode"] == "CutOffPassed"
    assert "2026-03-03" in late.json()["message"]
    # Approved after hours: Pending until the next business day.
    approved = (
        cfo(client, portal)
        .api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
        .json()
    )
    assert approved["status"] == "Pending" and approved["scheduledDebitDate"] == "2026-03-03"
    assert approved["estimatedArrivalDate"] == "2026-03-05"
    tomorrow = pay(portal, bill, "50.00", requestedDebitDate="2026-03-03")
    assert tomorrow.status_code == 201


def test_k_of_n_signing_authorities(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="700.00", billNumber="KN-1")
    payment = pay(portal, bill, "700.00", account_name="Reserve Account").json()
    assert payment["requiredApprovals"] == 2
    assert len(payment["approvals"]) == 2  # the initiator is not among his own signers
    after_one = (
        cfo(client, portal)
        .api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
        .json()
    )
    assert after_one["status"] == "ApprovalRequired"
    clerk_client = TestClient(client.app)
    clerk = Portal(clerk_client, login(clerk_client, "clerk@northwind-cpa.test"), portal.company_id)
    after_two = clerk.api("POST", clerk.company(f"/payments/{payment['paymentId']}/approve"), json={}).json()
    assert after_two["status"] == "Pending"
    # Accountants may create payments but cannot sign them; viewers can do neither.
    accountant_client = TestClient(client.app)
    accountant = Portal(
        accountant_client, login(accountant_client, f"accountant@{SLUG}.test"), portal.company_id
    )
    other = pay(accountant, create_bill(portal, amount="80.00", billNumber="KN-2"), "80.00")
    assert other.status_code == 201
    refused = accountant.api(
        "POST", accountant.company(f"/payments/{other.json()['paymentId']}/approve"), json={}
    )
    assert refused.status_code == 403 and refused.json()["errorCode"] == "PermissionDenied"


def test_rejected_payment_releases_bill(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="120.00", billNumber="RJ-1")
    payment = pay(portal, bill, "120.00").json()
    rejected = (
        cfo(client, portal)
        .api("POST", portal.company(f"/payments/{payment['paymentId']}/reject"), json={})
        .json()
    )
    assert rejected["status"] == "Rejected"
    assert portal.api("GET", portal.company(f"/bills/{bill['billId']}")).json()["status"] == "Open"
    cannot = portal.api("POST", portal.company(f"/payments/{payment['paymentId']}/cancel"))
    assert cannot.status_code == 409


def test_cross_currency_wire_with_fx(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="2000.00", billNumber="FX-1")
    wrong_rail = pay(portal, bill, "2000.00", account_name="US Operating", paymentMethod="Eft")
    assert wrong_rail.status_code == 422 and wrong_rail.json()["errorCode"] == "CurrencyMismatch"
    payment = pay(portal, bill, "2000.00", account_name="US Operating").json()
    assert payment["paymentMethod"] == "Wire" and payment["sourceCurrency"] == "USD"
    assert payment["destinationCurrency"] == "CAD" and payment["feeAmount"] == 9.99
    assert payment["exchangeRate"] > payment["midMarketRate"]
    assert abs(payment["sourceAmount"] - 2000 * payment["exchangeRate"]) < 0.01
    cfo(client, portal).api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
    portal.advance(advance_hours=3)  # 12:00 wire cut-off
    assert get_payment(portal, payment["paymentId"])["status"] == "FundsDebited"
    portal.advance(advance_hours=1)
    assert get_payment(portal, payment["paymentId"])["status"] == "Exchanging"
    portal.advance(advance_days=1)
    assert get_payment(portal, payment["paymentId"])["status"] == "Processing"
    portal.advance(advance_days=2)
    assert get_payment(portal, payment["paymentId"])["status"] == "Completed"


def test_email_transfer_waits_for_claim_or_recall(client: TestClient, portal: Portal) -> None:
    vendor = first_vendor(portal, kind="EmailMoneyTransfer")
    bills = [create_bill(portal, amount="60.00", billNumber=f"EMT-{n}", vendor=vendor) for n in range(2)]
    payments = [pay(portal, b, "60.00").json() for b in bills]
    signer = cfo(client, portal)
    for p in payments:
        assert p["paymentMethod"] == "EmailMoneyTransfer"
        signer.api("POST", portal.company(f"/payments/{p['paymentId']}/approve"), json={})
    portal.advance(advance_days=3)
    assert [get_payment(portal, p["paymentId"])["status"] for p in payments] == ["Clearing", "Clearing"]
    portal.mutate(action="claimPayment", paymentId=payments[0]["paymentId"])
    recalled = portal.api("POST", portal.company(f"/payments/{payments[1]['paymentId']}/recall")).json()
    assert recalled["status"] == "Recalled"
    portal.advance(advance_days=1)
    assert get_payment(portal, payments[0]["paymentId"])["status"] == "Completed"


def test_hold_and_release(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="75.00", billNumber="HOLD-1")
    payment = pay(portal, bill, "75.00").json()
    cfo(client, portal).api("POST", portal.company(f"/payments/{payment['paymentId']}/approve"), json={})
    portal.mutate(action="holdPayment", paymentId=payment["paymentId"], reason="Compliance review")
    portal.advance(advance_days=3)
    held = get_payment(portal, payment["paymentId"])
    assert held["status"] == "OnHold" and held["displayStatus"] == "On Hold"
    portal.mutate(action="releasePayment", paymentId=payment["paymentId"])
    portal.advance(advance_days=3)
    assert get_payment(portal, payment["paymentId"])["status"] == "Completed"


def test_cheque_card_and_instant_rails(client: TestClient, portal: Portal) -> None:
    cheque_vendor = first_vendor(portal, kind="Cheque")
    cheque = pay(
        portal, create_bill(portal, amount="40.00", billNumber="CHQ", vendor=cheque_vendor), "40.00"
    ).json()
    assert cheque["paymentMethod"] == "Cheque" and cheque["feeAmount"] == 1.99
    assert cheque["estimatedArrivalDate"] == "2026-03-09"
    card = pay(
        portal, create_bill(portal, amount="100.00", billNumber="CARD"), "100.00", paymentMethod="Card"
    ).json()
    assert card["feeAmount"] == 2.9
    instant = pay(
        portal, create_bill(portal, amount="50.00", billNumber="INST"), "50.00", paymentMethod="PlootoInstant"
    )
    assert instant.status_code == 201 and instant.json()["feeAmount"] == 0
    no_email = pay(
        portal, create_bill(portal, amount="5.00", billNumber="X"), "5.00", paymentMethod="EmailMoneyTransfer"
    )
    assert no_email.status_code == 422 and no_email.json()["errorCode"] == "PaymentMethodUnavailable"


def test_unapproved_bill_cannot_be_paid(portal: Portal) -> None:
    bill = next(b for b in walk(portal, "/bills", 100) if b["status"] == "ApprovalRequired")
    response = pay(portal, bill, "1.00")
    assert response.status_code == 422 and response.json()["errorCode"] == "BillNotApproved"


def test_holiday_calendars() -> None:
    assert not CANADA.is_business_day(date(2026, 4, 3))  # Good Friday
    assert CANADA.add_business_days(date(2026, 6, 30), 1) == date(2026, 7, 2)  # Canada Day
    assert UNITED_STATES.add_business_days(date(2026, 7, 2), 1) == date(
        2026, 7, 6
    )  # July 4th observed on the 3rd
    assert UNITED_STATES.is_business_day(date(2026, 7, 1))


def test_seeded_in_flight_payments_move_on(portal: Portal) -> None:
    before = {p["paymentId"]: p["status"] for p in walk(portal, "/payments", 200)}
    portal.advance(advance_days=10)
    after = {p["paymentId"]: p["status"] for p in walk(portal, "/payments", 200)}
    for payment_id, status in before.items():
        if (
            status in ("Pending", "FundsDebited", "Clearing", "Exchanging", "Processing")
            and after[payment_id] != "Clearing"
        ):
            assert after[payment_id] in ("Completed", "Returned", "Failed"), (status, after[payment_id])


def test_signing_rules_for_other_roles(client: TestClient, portal: Portal) -> None:
    bill = create_bill(portal, amount="90.00", billNumber="ROLE-1")
    payment = pay(portal, bill, "90.00").json()
    custom_client = TestClient(client.app)
    custom = Portal(custom_client, login(custom_client, f"custom@{SLUG}.test"), portal.company_id)
    # Custom has ApprovePayments but is not a signing authority on the Main Account.
    refused = custom.api("POST", custom.company(f"/payments/{payment['paymentId']}/approve"), json={})
    assert refused.status_code == 422 and refused.json()["errorCode"] == "NotAnApprover"
    viewer_client = TestClient(client.app)
    viewer = Portal(viewer_client, login(viewer_client, f"viewer@{SLUG}.test"), portal.company_id)
    assert (
        viewer.api("POST", viewer.company(f"/payments/{payment['paymentId']}/approve"), json={}).status_code
        == 403
    )
    assert viewer.api("POST", viewer.company(f"/payments/{payment['paymentId']}/cancel")).status_code == 403
    other_company = next(
        c["companyId"]
        for c in portal.api("GET", "/api/companies").json()["items"]
        if c["companyId"] != portal.company_id
    )
    foreign_account = portal.api("GET", f"/api/companies/{other_company}/bank-accounts").json()["items"][0]
    crossed = portal.api(
        "POST",
        portal.company("/payments"),
        json={
            "billId": bill["billId"], "amount": "1.00", "debitBankAccountId": foreign_account["bankAccountId"],
            "requestedDebitDate": "2026-03-03",
        },
    )  # fmt: skip
    assert crossed.status_code == 404
    assert account(portal, "Payroll Account")["verificationStatus"] == "BankValidationPending"
    pending_account = pay(
        portal,
        create_bill(portal, amount="10.00", billNumber="ROLE-2"),
        "1.00",
        account_name="Payroll Account",
        requestedDebitDate="2026-03-03",
    )
    assert (
        pending_account.status_code == 422 and pending_account.json()["errorCode"] == "BankAccountNotVerified"
    )


def test_payment_lookups_by_bill_and_reference(portal: Portal) -> None:
    bill = create_bill(portal, amount="300.00", billNumber="LOOK-1")
    first = pay(portal, bill, "100.00", externalReference="gw-look-1").json()
    second = pay(portal, bill, "100.00", externalReference="gw-look-2").json()
    by_bill = portal.api("GET", portal.company("/payments"), params={"billId": bill["billId"]}).json()
    assert {p["paymentId"] for p in by_bill["items"]} == {first["paymentId"], second["paymentId"]}
    portal.api("POST", portal.company(f"/payments/{first['paymentId']}/cancel"))
    live = portal.api(
        "GET", portal.company("/payments"), params={"billId": bill["billId"], "status": "ApprovalRequired"}
    )
    assert [p["paymentId"] for p in live.json()["items"]] == [second["paymentId"]]
    both = portal.api(
        "GET",
        portal.company("/payments"),
        params={"billId": bill["billId"], "externalReference": "gw-look-1"},
    ).json()
    assert [p["paymentId"] for p in both["items"]] == [first["paymentId"]]
    assert (
        portal.api("GET", portal.company("/payments"), params={"externalReference": "nope"}).json()[
            "totalCount"
        ]
        == 0
    )
    assert portal.api("GET", portal.company("/payments"), params={"billId": "nope"}).json()["totalCount"] == 0
