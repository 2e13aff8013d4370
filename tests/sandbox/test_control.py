"""The /__sandbox control API: reset, clock, outbox, users, ground truth, mutations, switch-off."""

from __future__ import annotations

from fastapi.testclient import TestClient

from sandbox.sandbox_helpers import CONTROLLER, Portal, login, make_client
from sandbox.test_api import walk


def test_reset_changes_scale_and_drops_sessions(portal: Portal) -> None:
    response = portal.client.post("/__sandbox/reset", json={"seed": 3, "companies": 1, "billsPerCompany": 12})
    assert response.status_code == 200
    body = response.json()
    assert len(body["companies"]) == 1 and body["now"] == "2026-03-02T14:00:00Z"
    assert portal.api("GET", "/api/companies").status_code == 401
    headers = login(portal.client, CONTROLLER)
    company_id = portal.client.get("/api/companies", headers=headers).json()["items"][0]["companyId"]
    fresh = Portal(portal.client, headers, company_id)
    assert len(walk(fresh, "/bills", 100)) == 12


def test_clock_moves_forward_only(client: TestClient) -> None:
    start = client.get("/__sandbox/clock").json()
    assert start == {"now": "2026-03-02T14:00:00Z", "businessDate": "2026-03-02", "isBusinessHours": True}
    friday = client.post("/__sandbox/clock", json={"advance_days": 4}).json()
    assert friday["now"] == "2026-03-06T14:00:00Z"
    monday = client.post("/__sandbox/clock", json={"advance_days": 1}).json()
    assert (
        monday["businessDate"] == "2026-03-09" and monday["now"] == "2026-03-09T13:00:00Z"
    )  # DST began on the 8th
    assert client.post("/__sandbox/clock", json={"advance_hours": 10}).json()["isBusinessHours"] is False
    assert client.post("/__sandbox/clock", json={"set": "2026-01-01T00:00:00Z"}).status_code == 409
    assert client.post("/__sandbox/clock", json={"advance_minutes": -5}).status_code == 409
    assert (
        client.post("/__sandbox/clock", json={"set": "2026-03-20T12:00:00Z"}).json()["now"]
        == "2026-03-20T12:00:00Z"
    )


def test_clock_can_start_elsewhere() -> None:
    from datetime import UTC, datetime

    with make_client(start_time=datetime(2026, 12, 24, 20, 0, tzinfo=UTC)) as client:
        clock = client.get("/__sandbox/clock").json()
        assert clock["businessDate"] == "2026-12-24"


def test_users_listing_has_no_secrets(client: TestClient) -> None:
    users = client.get("/__sandbox/users").json()
    emails = {u["email"] for u in users}
    assert {CONTROLLER, "clerk@northwind-cpa.test", "viewer@maple-leaf-bakery-ltd.test"} <= emails
    controller = next(u for u in users if u["email"] == CONTROLLER)
    assert controller["mfaMethod"] == "Totp" and set(controller["roles"].values()) == {"Administrator"}
    assert "sandbox-password" not in client.get("/__sandbox/users").text
    assert "PLOOTOSANDBOX" not in client.get("/__sandbox/users").text


def test_ground_truth_lists_every_payment_of_a_bill(portal: Portal) -> None:
    paid = next(b for b in walk(portal, "/bills", 100) if b["paymentIds"])
    truth = portal.client.get("/__sandbox/ground-truth/payments", params={"bill": paid["billId"]}).json()
    assert [p["paymentId"] for p in truth] == paid["paymentIds"]
    assert portal.client.get("/__sandbox/ground-truth/payments", params={"bill": "nope"}).status_code == 404


def test_mutations_as_other_users(portal: Portal) -> None:
    approval = next(b for b in walk(portal, "/bills", 100) if b["status"] == "ApprovalRequired")
    step = next(s for s in approval["approvalSteps"] if s["status"] == "ApprovalMandatory")
    users = {u["userId"]: u["email"] for u in portal.api("GET", portal.company("/users")).json()["items"]}
    portal.mutate(action="approveBill", billId=approval["billId"], userEmail=users[step["approverUserId"]])
    updated = portal.api("GET", portal.company(f"/bills/{approval['billId']}")).json()
    assert any(s["status"] == "Approved" for s in updated["approvalSteps"])
    open_bill = next(
        b for b in walk(portal, "/bills", 100) if b["status"] == "Open" and b["currency"] == "CAD"
    )
    created = portal.mutate(
        action="createPayment", billId=open_bill["billId"], userEmail="clerk@northwind-cpa.test"
    )
    payment_id = created["changed"][0]
    portal.mutate(action="approvePayment", paymentId=payment_id, userEmail=CONTROLLER)
    portal.mutate(action="completePayment", paymentId=payment_id)
    assert portal.api("GET", portal.company(f"/payments/{payment_id}")).json()["status"] == "Completed"
    bad = portal.client.post("/__sandbox/mutate", json={"action": "explode"})
    assert bad.status_code == 400
    other = next(
        b for b in walk(portal, "/bills", 100) if b["status"] == "Open" and b["billId"] != open_bill["billId"]
    )
    made = portal.mutate(action="createPayment", billId=other["billId"], userEmail="clerk@northwind-cpa.test")
    portal.mutate(action="failPayment", paymentId=made["changed"][0], reason="InvalidAccount")
    assert (
        portal.api("GET", portal.company(f"/payments/{made['changed'][0]}")).json()["failureReason"]
        == "InvalidAccount"
    )


def test_a_new_vendor_and_a_bill_to_it(portal: Portal) -> None:
    before = portal.api("GET", portal.company("/vendors?pageSize=1")).json()["totalCount"]
    vendor_id = portal.mutate(action="createVendor", companyId=portal.company_id, name="Fresh Fields Co.",
                              currency="USD")["changed"][0]  # fmt: skip
    vendor = portal.api("GET", portal.company(f"/vendors/{vendor_id}")).json()
    assert vendor["displayName"] == "Fresh Fields Co." and vendor["currency"] == "USD"
    assert portal.api("GET", portal.company("/vendors?pageSize=1")).json()["totalCount"] == before + 1
    bill_id = portal.mutate(action="createBills", companyId=portal.company_id, vendorId=vendor_id,
                            count=1)["changed"][0]  # fmt: skip
    bill = portal.api("GET", portal.company(f"/bills/{bill_id}")).json()
    assert bill["vendorId"] == vendor_id and bill["currency"] == "USD"
    unknown = portal.client.post("/__sandbox/mutate", json={"action": "createBills", "vendorId": "nope"})
    assert unknown.status_code == 404
    bad = portal.client.post("/__sandbox/mutate", json={"action": "createVendor", "currency": "GBP"})
    assert bad.status_code == 400


def test_session_revocation_by_user(portal: Portal) -> None:
    assert portal.client.post("/__sandbox/sessions/revoke", json={"email": CONTROLLER}).json()["revoked"] == 1
    assert portal.api("GET", "/api/session").status_code == 401


def test_control_api_can_be_switched_off() -> None:
    with make_client(control_enabled=False) as client:
        assert client.get("/__sandbox/clock").status_code == 404
        assert client.get("/login").status_code == 200


def test_reset_validates_scale(client: TestClient) -> None:
    assert client.post("/__sandbox/reset", json={"companies": 0}).status_code == 400
    assert client.post("/__sandbox/reset", json={"billsPerCompany": "many"}).status_code == 400


def _listed_ids(portal: Portal, suffix: str, since: str | None = None) -> set[str]:
    query = f"?pageSize=500&modifiedSince={since}" if since else "?pageSize=500"
    body = portal.api("GET", portal.company(f"{suffix}{query}")).json()
    return {item["billId"] if suffix == "/bills" else item.get("vendorId") or item.get("customerId")
            for item in body["items"]}  # fmt: skip


def test_deleted_bills_and_contacts_are_gone_from_listings_and_reads(portal: Portal) -> None:
    vendor_id = portal.mutate(action="createVendor", companyId=portal.company_id)["changed"][0]
    bill_id = portal.mutate(action="createBills", companyId=portal.company_id, vendorId=vendor_id,
                            count=1)["changed"][0]  # fmt: skip
    stamp = portal.api("GET", portal.company(f"/bills/{bill_id}")).json()["lastModified"]
    assert bill_id in _listed_ids(portal, "/bills", since=stamp)
    # A contact something still refers to stays.
    refused = portal.client.post("/__sandbox/mutate", json={"action": "deleteVendor", "vendorId": vendor_id})
    assert refused.status_code == 409 and refused.json()["errorCode"] == "InvalidState"

    assert portal.mutate(action="deleteBill", billId=bill_id)["changed"] == [bill_id]
    assert portal.mutate(action="deleteVendor", vendorId=vendor_id)["changed"] == [vendor_id]
    for path, object_id in ((f"/bills/{bill_id}", bill_id), (f"/vendors/{vendor_id}", vendor_id)):
        gone = portal.api("GET", portal.company(path))
        assert gone.status_code == 404 and gone.json()["errorCode"] == "NotFound", object_id
    assert bill_id not in _listed_ids(portal, "/bills") | _listed_ids(portal, "/bills", since=stamp)
    assert vendor_id not in _listed_ids(portal, "/vendors")
    again = portal.client.post("/__sandbox/mutate", json={"action": "deleteBill", "billId": bill_id})
    assert again.status_code == 404

    customer_id = portal.mutate(action="createCustomer", companyId=portal.company_id, name="Walk-in Ltd",
                                email="ap@walk-in.example")["changed"][0]  # fmt: skip
    customer = portal.api("GET", portal.company(f"/customers/{customer_id}")).json()
    assert customer["displayName"] == "Walk-in Ltd" and customer["padAgreementStatus"] == "None"
    assert portal.mutate(action="deleteCustomer", customerId=customer_id)["changed"] == [customer_id]
    assert portal.api("GET", portal.company(f"/customers/{customer_id}")).status_code == 404
    assert customer_id not in _listed_ids(portal, "/customers")


def test_a_bill_with_a_payment_under_way_or_a_contact_with_invoices_cannot_be_deleted(portal: Portal) -> None:
    bill_id = portal.mutate(action="createBills", companyId=portal.company_id, count=1)["changed"][0]
    portal.mutate(action="createPayment", billId=bill_id, userEmail=CONTROLLER)
    refused = portal.client.post("/__sandbox/mutate", json={"action": "deleteBill", "billId": bill_id})
    assert refused.status_code == 409 and "cannot be deleted" in refused.json()["message"]
    assert portal.api("GET", portal.company(f"/bills/{bill_id}")).status_code == 200
    customers = portal.api("GET", portal.company("/customers?pageSize=1")).json()["items"]
    refused = portal.client.post(
        "/__sandbox/mutate", json={"action": "deleteCustomer", "customerId": customers[0]["customerId"]}
    )
    assert refused.status_code == 409
