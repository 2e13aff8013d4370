"""`GET /<objects>/{id}?fresh=true` reads the object again from the real sandbox before answering."""

from __future__ import annotations

import json

from sqlalchemy import delete, select

from plooto_api.store import models
from plooto_api.store.database import transaction

from .conftest import Gateway


def test_fresh_reads_the_object_again_from_the_portal(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved")
    with gateway.sessions()() as session:
        company = session.get(models.Company, bill.company_id)
        assert company is not None
    # Another portal user edits every bill of the company; the store has not synced since.
    gateway.control.post("/mutate", json={"action": "modifyBills", "companyId": company.upstream_id,
                                          "count": 1000}).raise_for_status()  # fmt: skip
    stored = gateway.get(f"/bills/{bill.id}").json()
    fresh = gateway.get(f"/bills/{bill.id}?fresh=true").json()
    assert fresh["memo"] != stored["memo"] and fresh["memo"].startswith("Edited by another user")
    assert gateway.get(f"/bills/{bill.id}").json() == fresh  # and the store keeps it


def test_fresh_reads_what_the_object_refers_to_that_the_store_lacks(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved")
    with gateway.sessions()() as session:
        company = session.get(models.Company, bill.company_id)
        assert company is not None
    # A payee added in the portal and billed; synced with its bill, then lost from the store (as a
    # store written before references were completed would have it: the bill's vendor empty).
    vendor_upstream_id = gateway.control.post(
        "/mutate",
        json={"action": "createVendor", "companyId": company.upstream_id, "name": "Fresh Fields Co."},
    ).json()["changed"][0]
    bill_upstream_id = gateway.control.post("/mutate", json={
        "action": "createBills", "companyId": company.upstream_id, "vendorId": vendor_upstream_id,
        "count": 1}).json()["changed"][0]  # fmt: skip
    assert gateway.sync().ok
    with transaction(gateway.sessions()) as session:
        new_bill = session.scalars(
            select(models.Bill).where(models.Bill.upstream_id == bill_upstream_id)
        ).one()
        document = json.loads(new_bill.document)
        new_bill.vendor_id, new_bill.document = None, json.dumps({**document, "vendor_id": None})
        session.flush()
        session.execute(delete(models.Vendor).where(models.Vendor.upstream_id == vendor_upstream_id))
        bill_id = new_bill.id
    assert gateway.get(f"/bills/{bill_id}").json()["vendor_id"] is None

    fresh = gateway.get(f"/bills/{bill_id}?fresh=true").json()
    assert fresh["vendor_id"] is not None
    vendor = gateway.get(f"/vendors/{fresh['vendor_id']}").json()
    assert (vendor["upstream_id"], vendor["name"]) == (vendor_upstream_id, "Fresh Fields Co.")


def test_fresh_when_the_portal_cannot_be_read_is_a_clear_error(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    # The portal down (every read retried, then given up): 503, not a 500 with a reset connection.
    gateway.fault(kind="error", method="GET", pathPattern="/bills/", status=503)
    down = gateway.get(f"/bills/{bill.id}?fresh=true")
    assert down.status_code == 503, down.text
    assert (down.json()["error"]["code"], down.json()["error"]["param"]) == ("upstream_unavailable", "fresh")
    gateway.control.delete("/faults").raise_for_status()
    assert gateway.get(f"/bills/{bill.id}").status_code == 200  # the stored copy is still served
    # An answer in a changed shape marks the connection as a sync would, and writes stop.
    gateway.fault(kind="shape_change", objectType="bill", fromField="memo", toField="note")
    changed = gateway.get(f"/bills/{bill.id}?fresh=true")
    assert changed.status_code == 502, changed.text
    assert changed.json()["error"]["code"] == "upstream_changed"
    assert "memo" in changed.json()["error"]["message"]
    connection = gateway.get(f"/connections/{gateway.connection_id}").json()
    assert connection["state"] == "upstream_changed", connection
    blocked = gateway.post("/create_payment", {"bill_id": bill.id})
    assert blocked.status_code == 409 and blocked.json()["error"]["code"] == "writes_blocked"


def test_metrics_count_the_calls_to_the_portal(gateway: Gateway) -> None:
    # Retry storms and the share of 429s could not be seen from the gateway.
    def counters() -> dict[str, float]:
        body = gateway.get("/metrics").text
        return {
            line.split()[0]: float(line.split()[1])
            for line in body.splitlines()
            if line.startswith("plooto_api_portal_")
        }

    before = counters()
    assert before.keys() >= {"plooto_api_portal_requests_total", "plooto_api_portal_rate_limited_total",
                             "plooto_api_portal_retries_total", "plooto_api_portal_logins_total"}  # fmt: skip
    bill = gateway.bill(status="approved")
    gateway.control.post("/sessions/revoke", json={}).raise_for_status()  # the next call signs in again
    assert gateway.get(f"/bills/{bill.id}?fresh=true").status_code == 200
    after = counters()
    assert after["plooto_api_portal_requests_total"] > before["plooto_api_portal_requests_total"]
    assert after["plooto_api_portal_logins_total"] == before["plooto_api_portal_logins_total"] + 1
    assert after["plooto_api_portal_rate_limited_total"] == before["plooto_api_portal_rate_limited_total"]
