"""`GET /approvals?status=…` lists objects by their approval state, not by what became of them."""

from __future__ import annotations

from typing import Any

from plooto_api import mapping, schemas
from plooto_api.services.tokens import create_token
from plooto_api.store.database import transaction
from support import factories

PENDING_STEP = {"approver_name": "Sam Owner", "decision": "pending"}
APPROVED_STEP = {"approver_name": "Dana Controller", "decision": "approved", "decided_at": factories.T1}
REJECTED_STEP = {"approver_name": "Dana Controller", "decision": "rejected", "decided_at": factories.T1}

# name: (status, the portal's status, approval) as upstream.portal normalizes the portal's payments
PAYMENTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "awaiting": ("pending_approval", "ApprovalRequired", {"status": "pending", "steps": [PENDING_STEP]}),
    "approved": ("scheduled", "Pending", {"status": "approved", "steps": [APPROVED_STEP]}),
    "approved_then_cancelled": ("cancelled", "Cancelled", {"status": "approved", "steps": [APPROVED_STEP]}),
    "rejected": ("cancelled", "Rejected", {"status": "rejected", "steps": [REJECTED_STEP, PENDING_STEP]}),
    # Cancelled or deleted before anyone decided: the approvers' slots are skipped, never decided.
    "cancelled_unapproved": ("cancelled", "Cancelled", {"status": "pending", "steps": [PENDING_STEP] * 2}),
    "deleted_unapproved": ("cancelled", "Deleted", {"status": "pending", "steps": [PENDING_STEP]}),
    "needed_none": ("scheduled", "Pending", {"status": "not_required", "steps": []}),
}


def _add_payments(world: dict[str, Any]) -> dict[str, str]:
    tenant = world["a"]
    template = next(o for o in tenant["objects"] if o.object == "payment")
    ids: dict[str, str] = {}
    with transaction(world["client"].app.state.sessions) as session:
        for n, (name, (status, status_raw, approval)) in enumerate(PAYMENTS.items()):
            data = template.model_dump()
            common = factories._common("pay", tenant["company"], f"P-state-{n}")
            common["upstream"]["status_raw"] = status_raw
            data.update(common, status=status, approval=approval, status_history=[])
            payment = schemas.Payment.model_validate(data)
            session.add(mapping.new_row(payment, connection_id=tenant["connection"]))
            ids[name] = payment.id
        data = template.model_dump()  # a receivable payment is in no approval list
        data.update(factories._common("pay", tenant["company"], "P-state-in"), direction="receivable",
                    vendor_id=None, status="pending_approval", approval=None)  # fmt: skip
        session.add(mapping.new_row(schemas.Payment.model_validate(data), connection_id=tenant["connection"]))
    ids["seeded"] = template.id  # in transit, approved
    return ids


def _listed(world: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {world['tokens']['company_a']}"}
    response = world["client"].get("/approvals", params={"limit": 100, **params}, headers=headers)
    assert response.status_code == 200, response.text
    assert not response.json()["has_more"]
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_payments_are_listed_by_their_approval_state(world: dict[str, Any]) -> None:
    ids = _add_payments(world)
    names = {v: k for k, v in ids.items()}

    def listed(status: str) -> set[str]:
        return {names[a["id"]] for a in _listed(world, type="payment", status=status)}

    assert listed("pending") == {"awaiting"}
    assert listed("approved") == {"approved", "approved_then_cancelled", "seeded"}
    assert listed("rejected") == {"rejected"}
    for status in ("pending", "approved", "rejected"):
        items = _listed(world, type="payment", status=status)
        assert {a["status"] for a in items} == {status}
        assert all(a["payment"]["approval"]["status"] == status for a in items)
    approved = _listed(world, type="payment", status="approved")
    assert all(step["decision"] == "approved" for a in approved for step in a["steps"])


def test_bills_are_listed_by_their_approval_state(world: dict[str, Any]) -> None:
    for status in ("pending", "approved", "rejected"):
        items = _listed(world, type="bill", status=status)
        assert all(a["status"] == status and a["bill"]["approval"]["status"] == status for a in items)
        if status == "pending":
            assert items and all(a["bill"]["status"] == "pending_approval" for a in items)
    assert _listed(world, type="bill", status="approved")


def test_an_approval_shows_its_object_only_to_a_token_that_reads_it(world: dict[str, Any]) -> None:
    # An `approvals:read` token read whole bills and payments in `GET /approvals`, though
    # `GET /bills/{id}` and `GET /payments/{id}` refused it.
    _add_payments(world)
    with transaction(world["client"].app.state.sessions) as session:
        tokens = {
            name: create_token(session, scopes=scopes)[1]
            for name, scopes in {
                "approvals": ["approvals:read"],
                "with_bills": ["approvals:read", "bills:read"],
            }.items()
        }

    def listed(token: str) -> list[dict[str, Any]]:
        response = world["client"].get(
            "/approvals", params={"limit": 100}, headers={"Authorization": f"Bearer {tokens[token]}"}
        )
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    alone = listed("approvals")
    assert {item["type"] for item in alone} == {"bill", "payment"}
    for item in alone:
        assert item[item["type"]] is None and item["steps"] is not None and item["amount"]["amount"]
    with_bills = listed("with_bills")
    assert [item["id"] for item in with_bills] == [item["id"] for item in alone]
    for item in with_bills:
        shown = item[item["type"]]
        assert (shown is not None) == (item["type"] == "bill")
        assert shown is None or shown["id"] == item["id"]
    admin = world["client"].get(
        "/approvals", params={"limit": 100}, headers={"Authorization": f"Bearer {world['tokens']['admin']}"}
    )
    assert all(item[item["type"]]["id"] == item["id"] for item in admin.json()["data"])
