"""POST /create_payment against the real sandbox: defaults, store checks, portal refusals, and
exactly one portal payment under every injected fault and under 50 concurrent same-key requests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from plooto_api.money import from_minor
from plooto_api.services.audit import verify_chain
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction

from .conftest import Gateway


def _events(gw: Gateway) -> Counter[str]:
    with gw.sessions()() as session:
        return Counter(session.scalars(select(models.Event.type)))


def test_bill_id_alone_pays_the_amount_due(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    response = gateway.post("/create_payment", {"bill_id": bill.id})
    assert response.status_code == 201, response.text
    payment = response.json()
    assert payment["object"] == "payment" and payment["id"].startswith("pay")
    assert payment["amount"] == {"amount": str(from_minor(bill.amount_due_minor, "CAD")), "currency": "CAD"}
    assert payment["reference"].startswith("papi-op")
    assert gateway.get(f"/payments/{payment['id']}").status_code == 200
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
    assert _events(gateway)["payment.created"] >= 1
    # The bill the payment settles is read again with it: the store shows what the portal shows now.
    paid = gateway.get(f"/bills/{bill.id}").json()
    assert paid["amount_due"] == {"amount": "0.00", "currency": "CAD"} and paid["status"] == "scheduled"
    assert _events(gateway)["bill.updated"] == 1
    operation = gateway.get(f"/operations/{response.headers['Operation-Id']}").json()
    assert operation["status"] == "succeeded" and operation["attempts"] == 1
    with gateway.sessions()() as session:
        assert verify_chain(session) == []
        entries = list(session.scalars(select(models.AuditEntry).order_by(models.AuditEntry.seq)))[-2:]
        # Each entry names its object by type and id: the request the bill it pays, the result the payment.
        assert [(e.action, e.object_type, e.object_id) for e in entries] == [
            ("create_payment.requested", "bill", bill.id),
            ("create_payment.succeeded", "payment", payment["id"]),
        ]
        entry = session.scalars(select(models.AuditEntry).order_by(models.AuditEntry.seq.desc())).first()
        assert entry is not None and entry.upstream_evidence and entry.upstream_evidence["trace_id"]
        assert entry.upstream_evidence["http_status"] == 201


def test_without_a_date_a_payment_is_made_for_the_portals_day_after_its_clock_moved(gateway: Gateway) -> None:
    # The default debit date came from the portal's clock as last seen: after the portal's day moved
    # on, the portal refused it as in the past (422), though the caller had asked for no date.
    bill = gateway.bill(status="approved", currency="CAD")
    assert gateway.get(f"/bills/{bill.id}?fresh=true").status_code == 200  # the portal's clock, as seen now
    gateway.control.post("/clock", json={"advance_days": 3}).raise_for_status()
    today = gateway.control.get("/clock").json()["businessDate"]
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="moved-clock")
    assert response.status_code == 201, response.text
    assert response.json()["scheduled_for"] >= today
    assert len(gateway.ground_truth(bill.upstream_id)) == 1


def test_a_payment_stands_when_its_bill_reads_back_in_a_changed_shape(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="shape_change", objectType="bill", fromField="totalAmount", toField="grandTotal")
    response = gateway.post("/create_payment", {"bill_id": bill.id})
    assert response.status_code == 201, response.text
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
    # The bill is not written from an answer the adapter does not understand, and the connection
    # is marked as any read in a changed shape marks it: further writes wait for an operator.
    stored = gateway.get(f"/bills/{bill.id}").json()
    assert stored["amount_due"]["amount"] == str(from_minor(bill.amount_due_minor, "CAD"))
    connection = gateway.get(f"/connections/{gateway.connection_id}").json()
    assert connection["state"] == "upstream_changed"
    assert any("totalAmount" in d for d in connection["state_detail"]["differences"])
    again = gateway.post("/create_payment", {"bill_id": gateway.bill(status="approved", currency="CAD").id})
    assert again.status_code == 409 and again.json()["error"]["code"] == "writes_blocked"


def test_store_checks_refuse_before_sending(gateway: Gateway) -> None:
    pending = gateway.bill(status="pending_approval")
    response = gateway.post("/create_payment", {"bill_id": pending.id})
    assert response.status_code == 422 and response.json()["error"]["code"] == "bill_not_approved"
    approved = gateway.bill(status="approved", currency="CAD")
    too_much = str(from_minor(approved.amount_due_minor + 1, "CAD"))
    response = gateway.post("/create_payment", {"bill_id": approved.id, "amount": too_much})
    assert response.status_code == 422 and response.json()["error"]["code"] == "amount_exceeds_amount_due"
    assert gateway.post("/create_payment", {"bill_id": "bill_nope"}).status_code == 404
    empty = gateway.post("/create_payment", {"bill_id": ""}).json()["error"]
    assert (empty["code"], empty["param"]) == ("invalid_request", "bill_id")
    with gateway.sessions()() as session:
        assert session.scalars(select(models.Operation)).all() == []
    with gateway.sessions()() as session, session.begin():
        connection = session.get(models.Connection, gateway.connection_id)
        assert connection is not None
        connection.state = "upstream_changed"
        connection.state_detail = {"differences": ["bill: missing field 'totalAmount'"]}
    response = gateway.post("/create_payment", {"bill_id": approved.id})
    assert response.status_code == 409 and response.json()["error"]["code"] == "writes_blocked"
    # What differs, and the way out: an operator's clear-drift (not only a new adapter).
    message = response.json()["error"]["message"]
    assert "missing field 'totalAmount'" in message and f"clear-drift {gateway.connection_id}" in message
    assert gateway.ground_truth(approved.upstream_id) == []


def _bills(gw: Gateway) -> int:
    with gw.sessions()() as session:
        return len(session.scalars(select(models.Bill.id)).all())


def test_drift_blocks_writes_until_an_operator_clears_it(make_gateway: Callable[..., Gateway]) -> None:
    # The app runs its jobs (clearing syncs at once); its periodic syncs wait an hour after the first.
    gateway = make_gateway(run_jobs=True, sync_fast_interval_seconds=3600.0)
    gateway.wait_synced_after(gateway.get(f"/connections/{gateway.connection_id}").json()["last_synced_at"])
    bill = gateway.bill(status="approved", currency="CAD")
    with gateway.sessions()() as session:
        company = session.get(models.Company, bill.company_id)
        assert company is not None
        company_upstream_id = company.upstream_id
    gateway.fault(kind="shape_change", objectType="bill", fromField="totalAmount", toField="grandTotal")
    gateway.control.post("/mutate", json={"action": "createBills", "companyId": company_upstream_id,
                                          "count": 1}).raise_for_status()  # fmt: skip
    bills_before = _bills(gateway)
    assert gateway.sync().drift  # the new bill comes back in the changed shape, and is not written
    assert _bills(gateway) == bills_before
    connection = gateway.get(f"/connections/{gateway.connection_id}").json()
    assert connection["state"] == "upstream_changed"
    differences = connection["state_detail"]["differences"]
    assert any("totalAmount" in d for d in differences)
    assert len(differences) == len(set(differences))  # once, though every company's bills differ
    # A refusal sends nothing, so it is not kept for its key (Stripe's semantics): the client that
    # retries with the same key once the block is lifted has its payment made.
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="pay-through-drift")
    assert response.status_code == 409 and response.json()["error"]["code"] == "writes_blocked"
    again = gateway.post("/create_payment", {"bill_id": bill.id}, key="pay-through-drift")
    assert again.status_code == 409 and "Idempotent-Replayed" not in again.headers

    with transaction(gateway.sessions()) as session:
        _row, reader = create_token(session, scopes=["connections:read"])
    response = gateway.client.post(f"/connections/{gateway.connection_id}/clear_drift",
                                   headers={"Authorization": f"Bearer {reader}"})  # fmt: skip
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
    assert gateway.post("/connections/conn_nope/clear_drift").status_code == 404

    gateway.control.delete("/faults").raise_for_status()  # the adapter "updated"
    response = gateway.post(f"/connections/{gateway.connection_id}/clear_drift")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "healthy"
    assert response.json()["state_detail"]["cleared_by"].startswith("tok")
    assert _events(gateway)["connection.repaired"] == 1
    with gateway.sessions()() as session:
        assert verify_chain(session) == []
        entry = session.scalars(select(models.AuditEntry).order_by(models.AuditEntry.seq.desc())).first()
        assert entry is not None and entry.action == "connection.drift_cleared"
        assert entry.connection_id == gateway.connection_id and entry.actor.startswith("tok")
        assert entry.detail and any("totalAmount" in d for d in entry.detail["differences"])
    again = gateway.post(f"/connections/{gateway.connection_id}/clear_drift")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    healthy_before = _events(gateway)["connection.healthy"]
    assert gateway.sync().ok  # healthy stays healthy: no second event for the clearing's note
    assert _events(gateway)["connection.healthy"] == healthy_before
    assert "not upstream_changed" in again.json()["error"]["message"]

    # The sync that clearing started mirrors the bill the portal had answered in the changed shape.
    synced = gateway.wait_synced_after(connection["last_synced_at"])
    assert synced["state"] == "healthy"
    assert _bills(gateway) == bills_before + 1
    paid = gateway.post("/create_payment", {"bill_id": bill.id}, key="pay-through-drift")
    assert paid.status_code == 201, paid.text
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
    replay = gateway.post("/create_payment", {"bill_id": bill.id}, key="pay-through-drift")
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == paid.json()
    assert replay.headers["Operation-Id"] == paid.headers["Operation-Id"]  # the first answer's, whole


def test_portal_refusal_is_a_4xx_with_its_code_and_scopes_are_checked(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    response = gateway.post("/create_payment", {"bill_id": bill.id, "scheduled_for": "2026-01-05"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "debit_date_in_past"
    operation = gateway.get(f"/operations/{response.headers['Operation-Id']}").json()
    assert operation["status"] == "failed" and operation["error"]["portal_code"] == "DebitDateInPast"
    with transaction(gateway.sessions()) as session:
        _row, secret = create_token(session, scopes=["bills:read", "payments:read"])
    response = gateway.client.post("/create_payment", json={"bill_id": bill.id},
                                   headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
    assert gateway.ground_truth(bill.upstream_id) == []


FAULTS: dict[str, dict[str, Any]] = {
    "dropped_response_after_apply": {"kind": "drop_response", "mode": "abort"},
    "5xx_after_apply": {"kind": "drop_response", "mode": "502"},
    "5xx_without_apply": {"kind": "error", "status": 503},
    "session_revoked_mid_write": {"kind": "revoke_session"},
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_exactly_one_payment_under_each_fault(gateway: Gateway, fault: str) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(**FAULTS[fault], method="POST", pathPattern=r"/payments$", count=1)
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key=f"fault-{fault}")
    assert response.status_code in (201, 202), response.text
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    truth = gateway.ground_truth(bill.upstream_id)
    assert len(truth) == 1, truth
    assert truth[0]["externalReference"] == operation["reference"]


def test_latency_beyond_the_wait_answers_202_then_succeeds(make_gateway: Any) -> None:
    gw = make_gateway(write_wait_seconds=0.5)
    bill = gw.bill(status="approved", currency="CAD")
    gw.fault(kind="latency", latencyMs=1500, method="POST", pathPattern=r"/payments$", count=1)
    response = gw.post("/create_payment", {"bill_id": bill.id}, key="slow-1")
    assert response.status_code == 202, response.text
    assert response.json()["object"] == "operation" and response.json()["status"] in ("pending", "running")
    operation = gw.wait_operation(response.json()["id"])
    assert operation["status"] == "succeeded"
    assert operation["result"]["object"]["id"] == operation["result"]["object_id"]
    assert len(gw.ground_truth(bill.upstream_id)) == 1
    replay = gw.post("/create_payment", {"bill_id": bill.id}, key="slow-1")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    # How the write ended, not the 202 it first answered ("running", replayed for 7 days).
    assert replay.status_code == 201, replay.text
    assert replay.json()["object"] == "payment" and replay.json()["id"] == operation["result"]["object_id"]


def test_latency_beyond_the_portal_timeout_is_read_back_not_resent(make_gateway: Any) -> None:
    gw = make_gateway(write_wait_seconds=0.2, write_timeout_seconds=0.3, write_settle_seconds=1.5)
    bill = gw.bill(status="approved", currency="CAD")
    gw.fault(kind="latency", latencyMs=1000, method="POST", pathPattern=r"/payments$", count=1)
    response = gw.post("/create_payment", {"bill_id": bill.id})
    assert response.status_code == 202
    operation = gw.wait_operation(response.json()["id"])
    # Not found while the portal might still apply it, so nothing was re-sent before the settle window
    # ended (the sandbox drops a request whose client hung up; a real portal might not).
    assert operation["status"] == "succeeded", operation
    assert len(gw.ground_truth(bill.upstream_id)) == 1


def test_fifty_concurrent_requests_with_one_key_pay_once(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    body = {"bill_id": bill.id}
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: gateway.post("/create_payment", body, key="same-key"), range(50)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses[201] >= 1 and set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["id"] for r in created}) == 1
    assert sum(1 for r in created if r.headers.get("Idempotent-Replayed") != "true") == 1
    assert all(
        r.json()["error"]["code"] == "idempotency_key_in_flight" for r in responses if r.status_code == 409
    )
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
    replay = gateway.post("/create_payment", body, key="same-key")
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == created[0].json()
    reused = gateway.post("/create_payment", {**body, "amount": "1.00"}, key="same-key")
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert gateway.post("/create_payment", body, key="k" * 256).status_code == 400
    with gateway.sessions()() as session:
        assert len(session.scalars(select(models.Operation)).all()) == 1
