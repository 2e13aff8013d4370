"""A portal session lost again right after signing in (revoked twice, challenged twice) is transient:
a fresh read is 503 `upstream_unavailable` and a write stays open to be tried again, never the
`connection_requires_action` of a login that needs a person (which a refused login still gets)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from plooto_api.jobs import JobContext, get_job
from plooto_api.services import writes
from plooto_api.store import models
from plooto_api.store.database import transaction
from support.portal import lock_login_from_elsewhere

from .conftest import CONTROLLER, Gateway, left_open

# Every call of a company's API (not the sign-in pages): each request after a sign-in loses it again.
LOST = "^/api/companies/"


def _state(gw: Gateway) -> str:
    return str(gw.get(f"/connections/{gw.connection_id}").json()["state"])


def _sent(gw: Gateway, bill: models.Bill, operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in gw.ground_truth(bill.upstream_id) if p["externalReference"] == operation["reference"]]


@pytest.mark.parametrize("kind", ["revoke_session", "mfa_rechallenge"])
def test_a_fresh_read_whose_session_is_lost_twice_is_unavailable(gateway: Gateway, kind: str) -> None:
    # It answered 409 connection_requires_action "the portal login needs attention" though the
    # login was fine and nothing needed a person.
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind=kind, pathPattern=LOST, count=3)
    lost = gateway.get(f"/bills/{bill.id}?fresh=true")
    assert lost.status_code == 503, lost.text
    assert lost.json()["error"]["code"] == "upstream_unavailable"
    assert "lost again" in lost.json()["error"]["message"]
    assert _state(gateway) == "healthy"
    gateway.control.delete("/faults").raise_for_status()
    assert gateway.get(f"/bills/{bill.id}?fresh=true").status_code == 200


def test_a_fresh_read_on_a_login_the_portal_refuses_still_needs_attention(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    asyncio.run(lock_login_from_elsewhere(gateway.sandbox, gateway.control, CONTROLLER))
    refused = gateway.get(f"/bills/{bill.id}?fresh=true")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "connection_requires_action"
    assert _state(gateway) == "locked"


def test_a_write_whose_session_is_lost_twice_is_tried_again_and_done(gateway: Gateway) -> None:
    # It ended requires_action (its send counted though the portal's 401 applied nothing), and its
    # Idempotency-Key replayed that 409 for 7 days.
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="revoke_session", pathPattern=LOST, count=3)
    paid = gateway.post("/create_payment", {"bill_id": bill.id}, key="lost-twice-1")
    if paid.status_code == 202:  # slower than the request's wait: the write goes on
        operation = gateway.wait_operation(paid.headers["Operation-Id"])
        assert operation["status"] == "succeeded", operation
        paid = gateway.post("/create_payment", {"bill_id": bill.id}, key="lost-twice-1")
    assert paid.status_code == 201, paid.text
    operation = gateway.get(f"/operations/{paid.headers['Operation-Id']}").json()
    assert (operation["status"], operation["attempts"]) == ("succeeded", 1), operation
    assert len(_sent(gateway, bill, operation)) == 1
    assert _state(gateway) == "healthy"


def _retry_now(gw: Gateway, operation_id: str) -> dict[str, str]:
    """Make the operation's retry due and run the periodic retry, as the running gateway would."""
    with transaction(gw.sessions()) as session:
        row = session.get(models.Operation, operation_id)
        assert row is not None
        row.created_at = row.created_at - timedelta(seconds=1)
        row.error = {**(row.error or {}), "retry_at": "2000-01-01T00:00:00Z"}

    async def run() -> dict[str, str]:
        ctx = JobContext.from_settings(gw.settings, migrate=False)
        try:
            return dict(await get_job("writes.retry")(ctx))
        finally:
            await ctx.aclose()

    return asyncio.run(run())


def test_a_write_whose_session_keeps_being_lost_stays_open_and_keeps_its_key_usable(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writes, "TRANSIENT_RETRIES", 1)  # left for the periodic retry at once
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="revoke_session", pathPattern=LOST)  # until deleted
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="lost-always-1")
    assert response.status_code == 202, response.text
    operation = left_open(gateway, response.headers["Operation-Id"])
    # Open, as after an outage, with nothing counted as sent: the portal applied nothing.
    assert (operation["status"], operation["attempts"]) == ("pending", 0), operation
    assert operation["error"]["retryable"] is True and "lost again" in operation["error"]["last_error"]
    assert _state(gateway) == "healthy"
    assert _sent(gateway, bill, operation) == []
    gateway.control.delete("/faults").raise_for_status()
    assert _retry_now(gateway, operation["id"]) == {operation["id"]: "succeeded"}
    assert len(_sent(gateway, bill, operation)) == 1
    replay = gateway.post("/create_payment", {"bill_id": bill.id}, key="lost-always-1")
    assert replay.status_code == 201, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
