"""Approval steps the portal marks `Skipped` (another approver on the level decided, or the chain
ended first) are served as `skipped`, not as still `pending`, on bills and payments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.portal_gateway import CLERK, CONTROLLER, PortalGateway, portal_gateway
from plooto_api.store import models


@pytest.fixture
def gateway(database_url: str, tmp_path: Path, sandbox: str) -> Iterator[PortalGateway]:
    with portal_gateway(database_url, tmp_path / "data", sandbox) as gw:
        yield gw


def _all(gateway: PortalGateway, path: str, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = gateway.get(path, limit=100, **params, **({"cursor": cursor} if cursor else {})).json()
        items += body["data"]
        if not body["has_more"]:
            return items
        cursor = body["next_cursor"]


def test_steps_nobody_will_decide_are_skipped(gateway: PortalGateway) -> None:
    # A bill of two levels, one of two approvers each: the clerk approves the first, the controller
    # the second; the other approver of each level never decides.
    with gateway.sessions() as session:
        bills = session.scalars(
            select(models.Bill).where(models.Bill.connection_id == gateway.connection_id,
                                      models.Bill.status == "pending_approval").order_by(models.Bill.id)
        ).all()  # fmt: skip
        bill = next(b for b in bills if {s.level for s in b.approval_steps} == {1, 2})
        names = [(step.level, step.approver_name) for step in bill.approval_steps]
    gateway.mutate(action="approveBill", billId=bill.upstream_id, userEmail=CLERK)
    gateway.mutate(action="approveBill", billId=bill.upstream_id, userEmail=CONTROLLER)
    assert gateway.sync().ok

    approved = gateway.get(f"/bills/{bill.id}").json()
    assert approved["status"] == "approved" and approved["approval"]["status"] == "approved"
    steps = approved["approval"]["steps"]
    assert [(s["level"], s["approver_name"]) for s in steps] == names
    assert [s["decision"] for s in steps] == ["approved", "skipped", "approved", "skipped"]
    assert [s["decided_at"] is not None for s in steps] == [True, False, True, False]
    listed = next(a for a in _all(gateway, "/approvals", status="approved") if a["id"] == bill.id)
    assert [s["decision"] for s in listed["steps"]] == ["approved", "skipped", "approved", "skipped"]

    # Everywhere in the seed: nothing decided keeps a step pending; what awaits approval has no
    # step skipped at the level awaited.
    skipped = {"bill": 0, "payment": 0}
    for kind, path in (("bill", "/bills"), ("payment", "/payments")):
        for obj in _all(gateway, path):
            approval = obj.get("approval") or {"status": None, "steps": []}
            decisions = [step["decision"] for step in approval["steps"]]
            skipped[kind] += decisions.count("skipped")
            if approval["status"] in ("approved", "rejected"):
                assert "pending" not in decisions, (obj["id"], approval)
    assert skipped["bill"] and skipped["payment"]

    schema = gateway.client.app.openapi()["components"]["schemas"]["ApprovalStep"]["properties"]["decision"]
    assert "skipped" in schema["enum"]
