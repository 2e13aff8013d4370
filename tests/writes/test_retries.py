"""Writes a portal outage leaves open: taken up again by the running gateway, with backoff, until they
end; failed (and never sent) once too old; read back, never sent blind, when sent before."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from plooto_api.config import Settings
from plooto_api.jobs import JobContext, get_job
from plooto_api.services import writes
from plooto_api.store import models
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.upstream import PortalSession, UpstreamUnavailable

from .conftest import Gateway, left_open


@pytest.fixture(autouse=True)
def one_quick_try(monkeypatch: pytest.MonkeyPatch) -> None:
    # The few tries at once inside a request only make an outage take longer to show.
    monkeypatch.setattr(writes, "TRANSIENT_RETRIES", 1)


def _age(gw: Gateway, operation_id: str, **by: float) -> None:
    """Drive the gateway's time: the operation was requested `by` ago and its retry is due now."""
    with transaction(gw.sessions()) as session:
        row = session.get(models.Operation, operation_id)
        assert row is not None
        row.created_at = row.created_at - timedelta(**by)
        row.error = {**(row.error or {}), "retry_at": "2000-01-01T00:00:00Z"}


def _run(gw: Gateway, job: str) -> Any:
    """Run a write job in a context of its own, as another run of the gateway would."""

    async def run() -> Any:
        ctx = JobContext.from_settings(gw.settings, migrate=False)
        try:
            return await get_job(job)(ctx)
        finally:
            await ctx.aclose()

    return asyncio.run(run())


def _sent(gw: Gateway, bill: models.Bill, operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in gw.ground_truth(bill.upstream_id) if p["externalReference"] == operation["reference"]]


def test_a_write_an_outage_left_open_is_sent_by_the_running_gateway_once_the_portal_is_back(
    make_gateway: Any,
) -> None:
    # It used to wait for the next start of the gateway, however long the portal had been back.
    gw = make_gateway(run_jobs=True, write_retry_seconds=0.2, sync_slow_interval_seconds=3600,
                      sync_fast_interval_seconds=3600)  # fmt: skip
    bill = gw.bill(status="approved", currency="CAD")
    gw.fault(kind="error", status=503)  # every path: the portal is down
    response = gw.post("/create_payment", {"bill_id": bill.id}, key="outage-1")
    assert response.status_code == 202, response.text
    operation = left_open(gw, response.headers["Operation-Id"])
    assert operation["status"] in ("pending", "running") and operation["error"]["retryable"] is True
    assert operation["error"]["expires_at"] > operation["created_at"]
    gw.control.delete("/faults").raise_for_status()
    done = gw.wait_operation(operation["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert len(_sent(gw, bill, done)) == 1
    replay = gw.post("/create_payment", {"bill_id": bill.id}, key="outage-1")
    assert (replay.status_code, replay.json()["id"]) == (201, done["result"]["object_id"])


def test_a_retry_waits_for_its_time(gateway: Gateway) -> None:
    gateway.settings.write_retry_seconds = 3600.0  # the first wait: an hour
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="error", status=503)
    operation = left_open(
        gateway, gateway.post("/create_payment", {"bill_id": bill.id}).headers["Operation-Id"]
    )
    gateway.control.delete("/faults").raise_for_status()
    assert _run(gateway, "writes.retry") == {}  # not due yet
    _age(gateway, operation["id"], seconds=0)
    writes._IN_HAND.add(operation["id"])  # carried by another run of this process
    try:
        assert _run(gateway, "writes.retry") == {}
    finally:
        writes._IN_HAND.discard(operation["id"])
    assert _run(gateway, "writes.retry") == {operation["id"]: "succeeded"}
    assert len(_sent(gateway, bill, operation)) == 1
    assert _run(gateway, "writes.retry") == {}


def test_a_write_never_sent_expires_its_key_is_released_and_it_is_never_sent_later(gateway: Gateway) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="error", status=503)
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="expire-1")
    assert response.status_code == 202, response.text
    operation = left_open(gateway, response.headers["Operation-Id"])
    assert (operation["status"], operation["attempts"]) == ("pending", 0)
    _age(gateway, operation["id"], hours=2)
    gateway.control.delete("/faults").raise_for_status()  # back, but too late for this write
    assert _run(gateway, "writes.retry") == {operation["id"]: "failed"}
    expired = gateway.get(f"/operations/{operation['id']}").json()
    assert expired["status"] == "failed" and expired["attempts"] == 0
    assert (expired["error"]["status"], expired["error"]["code"]) == (503, "write_expired")
    assert "nothing was sent" in expired["error"]["message"]
    # Nothing was sent, so the key is free: the same request is carried out afresh.
    again = gateway.post("/create_payment", {"bill_id": bill.id}, key="expire-1")
    assert again.status_code == 201, again.text
    assert (
        again.headers.get("Idempotent-Replayed") is None and again.headers["Operation-Id"] != operation["id"]
    )
    _run(gateway, "writes.recover")  # a restart
    _run(gateway, "writes.retry")
    assert _sent(gateway, bill, operation) == []
    assert len(gateway.ground_truth(bill.upstream_id)) == 1
    with gateway.sessions()() as session:
        actions = session.scalars(
            select(models.AuditEntry.action).where(models.AuditEntry.object_id == bill.id)
        ).all()
    assert "create_payment.failed" in actions


def test_a_restart_does_not_send_a_write_requested_too_long_ago(gateway: Gateway) -> None:
    # The portal down long enough that a person made the payment by another request; the restart used
    # to send the first one as well: two payments.
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="error", status=503)
    response = gateway.post("/create_payment", {"bill_id": bill.id, "amount": "50.00"})
    operation = left_open(gateway, response.headers["Operation-Id"])
    _age(gateway, operation["id"], hours=2)
    gateway.control.delete("/faults").raise_for_status()
    paid = gateway.post("/create_payment", {"bill_id": bill.id, "amount": "50.00"}, key="by-hand")
    assert paid.status_code == 201, paid.text
    assert _run(gateway, "writes.recover") == {operation["id"]: "failed"}
    assert gateway.get(f"/operations/{operation['id']}").json()["error"]["code"] == "write_expired"
    assert len(gateway.ground_truth(bill.upstream_id)) == 1


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_write_sent_before_is_read_back_past_the_age_limit_and_never_sent_again(
    gateway: Gateway, applied: bool
) -> None:
    bill = gateway.bill(status="approved", currency="CAD")
    assert gateway.get(f"/bills/{bill.id}?fresh=true").status_code == 200  # signed in before the outage
    if applied:  # the payment is made, its answer lost
        gateway.fault(kind="drop_response", method="POST", pathPattern=r"/payments$", count=1)
    else:  # the portal's own 503: nothing applied
        gateway.fault(kind="error", method="POST", pathPattern=r"/payments$", count=1, status=503)
    gateway.fault(kind="error", method="GET", pathPattern=r"/payments$", status=503)  # no read-back
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="sent-1")
    operation = left_open(gateway, response.headers["Operation-Id"])
    assert (operation["status"], operation["attempts"]) == ("running", 1)
    _age(gateway, operation["id"], hours=2)
    gateway.control.delete("/faults").raise_for_status()
    result = _run(gateway, "writes.retry")
    ended = gateway.get(f"/operations/{operation['id']}").json()
    if applied:
        assert result == {operation["id"]: "succeeded"}
        assert ended["attempts"] == 1 and len(_sent(gateway, bill, operation)) == 1
    else:
        assert result == {operation["id"]: "failed"}
        assert ended["error"]["code"] == "write_expired" and ended["attempts"] == 1
        assert _sent(gateway, bill, operation) == []
        # Something was sent: the key keeps its answer.
        replay = gateway.post("/create_payment", {"bill_id": bill.id}, key="sent-1")
        assert replay.status_code == 503 and replay.headers["Idempotent-Replayed"] == "true"


def test_a_read_after_an_applied_write_that_cannot_reach_the_portal_sends_nothing_again(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reminder is sent; reading its invoice then fails to connect. That used to count as "the send
    # never left": the operation went back to no attempts, and the next try sent a second reminder.
    invoice = gateway.get("/invoices?status=overdue&limit=1").json()["data"][0]
    manual_before = sum(r["kind"] == "manual" for r in invoice["reminders"])
    fetch = PortalSession.fetch_object
    failed: list[str] = []

    async def fetch_once_unreachable(self: PortalSession, *args: Any) -> Any:
        if not failed:
            failed.append(args[1])
            raise UpstreamUnavailable("could not reach the portal: ConnectError")
        return await fetch(self, *args)

    monkeypatch.setattr(PortalSession, "fetch_object", fetch_once_unreachable)
    monkeypatch.setattr(writes, "TRANSIENT_RETRIES", 2)
    response = gateway.post(f"/invoices/{invoice['id']}/remind")
    operation = gateway.wait_operation(response.headers["Operation-Id"])
    assert operation["status"] == "succeeded", operation
    assert failed == ["invoice"] and operation["attempts"] == 1
    gateway.sync()  # the store as the portal has it
    reminders = gateway.get(f"/invoices/{invoice['id']}").json()["reminders"]
    assert sum(r["kind"] == "manual" for r in reminders) == manual_before + 1


def test_tries_thin_out_as_an_outage_lasts() -> None:
    ctx: Any = SimpleNamespace(settings=Settings(write_retry_seconds=5.0))
    now = utcnow()

    def delay(age_seconds: float) -> float:
        op: Any = SimpleNamespace(created_at=now - timedelta(seconds=age_seconds))
        return writes.retry_delay(ctx, op, now).total_seconds()

    assert delay(0) == 5.0  # at least write_retry_seconds
    assert 12.0 <= delay(60) <= 15.0  # a quarter of the age, with jitter
    assert 240.0 <= delay(7200) <= writes.RETRY_DELAY_MAX_SECONDS


def test_a_send_refused_before_the_portal_could_apply_it_is_not_counted(gateway: Gateway) -> None:
    # The portal answered the payment's POST with a 401 (its session revoked: nothing applied), and
    # signing in again failed with a 503. The send was counted, so the write was never sent again
    # (read back for the settle window, then expired keeping its key) though the portal had nothing.
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.control.post("/sessions/revoke", json={}).raise_for_status()
    gateway.fault(kind="error", method="POST", pathPattern="^/login$", status=503)
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="relogin-1")
    operation = left_open(gateway, response.headers["Operation-Id"])
    assert operation["attempts"] == 0, operation
    gateway.control.delete("/faults").raise_for_status()
    _age(gateway, operation["id"], seconds=0)
    assert _run(gateway, "writes.retry") == {operation["id"]: "succeeded"}
    assert len(_sent(gateway, bill, operation)) == 1


def test_sends_the_portal_refuses_with_errors_of_its_own_leave_the_write_for_the_retry(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five 503s in the portal's envelope (each: "failed, applied nothing") used up every send in
    # seven seconds: the write ended write_not_confirmed, its key replaying a 502 for 7 days.
    monkeypatch.setattr(writes, "resend_delay", lambda sends: 0.0)
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="error", method="POST", pathPattern=r"/payments$", status=503)
    response = gateway.post("/create_payment", {"bill_id": bill.id}, key="refused-1")
    operation = left_open(gateway, response.headers["Operation-Id"])
    assert (operation["status"], operation["attempts"]) == ("pending", 0), operation  # nothing applied
    assert "refused the write 3 times" in operation["error"]["last_error"]
    gateway.control.delete("/faults").raise_for_status()
    _age(gateway, operation["id"], seconds=0)
    assert _run(gateway, "writes.retry") == {operation["id"]: "succeeded"}
    assert len(_sent(gateway, bill, operation)) == 1


def test_a_write_another_process_sent_meanwhile_is_read_back_not_sent_again(gateway: Gateway) -> None:
    # Two gateways on one database: one started (its recovery loading every open write) while the
    # other held a write it had recorded but not sent yet; both sent it: two payments.
    bill = gateway.bill(status="approved", currency="CAD")
    gateway.fault(kind="error", status=503)
    operation = left_open(
        gateway, gateway.post("/create_payment", {"bill_id": bill.id}).headers["Operation-Id"]
    )
    gateway.control.delete("/faults").raise_for_status()

    async def race() -> tuple[Any, bool]:
        ctx = JobContext.from_settings(gateway.settings, migrate=False)
        try:
            loaded = writes._load(ctx, operation["id"])  # as this process saw it: never sent
            assert loaded is not None and loaded.attempts == 0
            with transaction(ctx.sessions) as session:  # the other process records its send
                row = session.get(models.Operation, operation["id"])
                assert row is not None
                row.attempts, row.status = 1, "running"
            return writes._record_send(ctx, loaded)
        finally:
            await ctx.aclose()

    row, may_send = asyncio.run(race())
    assert row is not None and row.attempts == 1 and may_send is False
