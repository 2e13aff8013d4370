"""End to end: portal changes in the real sandbox → sync → events → signed webhooks to a receiver on
loopback that fails the first attempts, with the gateway restarted half-way. Every event arrives at
least once, verified, in order per object. Retry time is driven by an injected clock."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine
from plooto_api.webhooks import RETRY_DELAYS, DeliveryWorker

from .conftest import Clock
from .receiver import Receiver

CONTROLLER = "controller@northwind-cpa.test"
CLERK = "clerk@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, sandbox: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, upstream_url=sandbox,
        vault_key=SecretStr(generate_key()), webhook_allow_private=True,
    )  # fmt: skip


class Gateway:
    """One life of the gateway's worker side: a JobContext, its sync engine and delivery worker."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.ctx = JobContext.from_settings(settings, migrate=False)
        self.worker = DeliveryWorker(self.ctx.sessions, self.ctx.vault, allow_private=True, now=clock)

    async def sync_and_deliver(self, connection_id: str) -> None:
        report = await SyncEngine(self.ctx).sync_connection(connection_id, cadence="fast")
        assert report.ok, report.error or report.drift
        await self.worker.run_until_idle()

    def one(self, stmt: Any) -> Any:
        with self.ctx.sessions() as session:
            row = session.scalars(stmt).first()
        assert row is not None, str(stmt)
        return row


def _mutate(control: httpx.Client, **body: Any) -> list[str]:
    response = control.post("/mutate", json=body)
    assert response.status_code == 200, response.text
    return list(response.json()["changed"])


async def test_every_event_of_a_scenario_arrives_signed_in_order_across_a_restart(
    settings: Settings, sandbox: str, receiver: Receiver, clock: Clock
) -> None:
    control = httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30)
    first_ids: set[str] = set()

    def flaky(n: int, webhook_id: str) -> int:
        # The first three requests fail, and so does the first attempt of every third message.
        fresh = webhook_id not in first_ids
        first_ids.add(webhook_id)
        return 500 if n < 3 or (fresh and len(first_ids) % 3 == 0) else 200

    receiver.status_for = flaky

    gateway = Gateway(settings, clock)
    with transaction(gateway.ctx.sessions) as session:
        connection_id = create_connection(session, gateway.ctx.vault, username=CONTROLLER, password=PASSWORD,
                                          upstream_url=sandbox, totp_secret=TOTP_SECRET).id  # fmt: skip
        admin = create_token(session, scopes=["*"])[1]
    assert (await SyncEngine(gateway.ctx).sync_connection(connection_id)).ok  # the initial pull
    with gateway.ctx.sessions() as session:
        start_seq = int(session.scalar(select(func.max(models.Event.seq))) or 0)

    # The endpoint is created over the API, on an app instance of its own (same database).
    headers = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(settings, run_jobs=False)) as api:
        created = api.post("/webhook_endpoints", json={"url": receiver.url}, headers=headers)
        assert created.status_code == 201, created.text
        endpoint = created.json()
    receiver.secret = endpoint["secret"]

    # 1. A bill created in the portal; 2. a bill awaiting approval is approved.
    company = gateway.one(select(models.Company).order_by(models.Company.name))
    [new_bill] = _mutate(control, action="createBills", companyId=company.upstream_id, count=1)
    await gateway.sync_and_deliver(connection_id)
    pending = gateway.one(
        select(models.Bill).where(models.Bill.approval_status == "pending").order_by(models.Bill.id)
    )
    _mutate(control, action="approveBill", billId=pending.upstream_id, userEmail=CLERK)
    await gateway.sync_and_deliver(connection_id)

    # The gateway restarts: a new context on the same database; deliveries carry on.
    await gateway.ctx.aclose()
    gateway = Gateway(settings, clock)

    # 3. The new bill is paid; 4. the payment completes as the portal's clock moves on.
    bill = gateway.one(select(models.Bill).where(models.Bill.upstream_id == new_bill))
    if bill.status != "approved":
        bill = gateway.one(
            select(models.Bill).where(models.Bill.status == "approved").order_by(models.Bill.id)
        )
    [payment] = _mutate(control, action="createPayment", billId=bill.upstream_id, userEmail=CONTROLLER)
    _mutate(control, action="approvePayment", paymentId=payment, userEmail=CLERK)
    await gateway.sync_and_deliver(connection_id)
    control.post("/clock", json={"advance_days": 3}).raise_for_status()
    settled = control.post("/mutate", json={"action": "completePayment", "paymentId": payment})
    assert settled.status_code in (200, 409), settled.text  # 409: the rail already completed it
    await gateway.sync_and_deliver(connection_id)

    # 5. A customer pays an open invoice, and the receipt clears.
    invoice = gateway.one(
        select(models.Invoice)
        .where(models.Invoice.status.in_(["sent", "viewed", "overdue"]))
        .order_by(models.Invoice.id)
    )
    _mutate(control, action="customerPays", invoiceId=invoice.upstream_id)
    control.post("/clock", json={"advance_days": 3}).raise_for_status()
    await gateway.sync_and_deliver(connection_id)

    # Retries come due as the injected clock moves through the schedule.
    for delay in RETRY_DELAYS:
        with gateway.ctx.sessions() as session:
            pending_count = session.scalar(
                select(func.count())
                .select_from(models.WebhookDelivery)
                .where(models.WebhookDelivery.status == "pending")
            )
        if not pending_count:
            break
        clock.advance(seconds=delay.total_seconds())
        await gateway.worker.run_until_idle()

    with gateway.ctx.sessions() as session:
        events = list(
            session.scalars(
                select(models.Event).where(models.Event.seq > start_seq).order_by(models.Event.seq)
            )
        )
        statuses = Counter(session.scalars(select(models.WebhookDelivery.status)))
    assert statuses == Counter({"succeeded": len(events)})
    types = Counter(e.type for e in events)
    for wanted in (
        "bill.created",
        "bill.approval_updated",
        "payment.created",
        "payment.status_updated",
        "invoice.paid",
    ):
        assert types[wanted] >= 1, (wanted, types)

    assert receiver.requests and all(r.verified for r in receiver.requests)
    assert sum(r.status == 500 for r in receiver.requests) >= 3
    delivered = receiver.delivered()
    first_arrival: dict[str, int] = {}
    for position, request in enumerate(delivered):
        first_arrival.setdefault(request.webhook_id, position)
    assert set(first_arrival) == {e.id for e in events}, "nothing missing, nothing extra"
    by_object: dict[str, list[models.Event]] = {}
    for event in events:
        if event.object_id:
            by_object.setdefault(event.object_id, []).append(event)
    for object_id, object_events in by_object.items():
        arrival = [first_arrival[e.id] for e in object_events]
        assert arrival == sorted(arrival), f"events of {object_id} out of order"
    # Each webhook carries the object as it was after its change.
    paid = gateway.one(select(models.Payment).where(models.Payment.upstream_id == payment))
    last_event = [e for e in events if e.object_id == paid.id][-1]
    payload = next(r.payload for r in delivered if r.webhook_id == last_event.id)
    assert payload["data"]["status"] == paid.status and paid.status in {"completed", "returned"}

    # The restarted gateway's API shows every attempt, failures included.
    with TestClient(create_app(settings, run_jobs=False)) as api:
        page = api.get(
            f"/webhook_endpoints/{endpoint['id']}/deliveries", params={"limit": 100}, headers=headers
        )
        assert page.status_code == 200
        attempts = [a for d in page.json()["data"] for a in d["attempts"]]
        assert {a["response_status"] for a in attempts} >= {200, 500}
    await gateway.ctx.aclose()
