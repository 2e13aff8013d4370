"""The delivery worker: signatures, the retry schedule, per-object order, timeouts, disabling."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.services.events import record_event
from plooto_api.services.tokens import Principal
from plooto_api.services.webhooks import create_endpoint, rotate_secret
from plooto_api.store.database import transaction
from plooto_api.store.models import (
    Event,
    VaultEntry,
    WebhookDelivery,
    WebhookDeliveryAttempt,
    WebhookEndpoint,
)
from plooto_api.store.scope import AccessScope
from plooto_api.store.vault import Vault
from plooto_api.webhooks import RETRY_DELAYS, DeliveryWorker
from plooto_api.webhooks.delivery import MAX_ATTEMPTS
from plooto_api.webhooks.schemas import WebhookEndpointCreate

from .conftest import Clock
from .receiver import Receiver

ADMIN = Principal(token_id="tok_admin", scopes=frozenset({"*"}), access=AccessScope())


@pytest.fixture
def vault() -> Vault:
    return Vault(os.urandom(32))


def _endpoint(sessions: sessionmaker[Session], vault: Vault, url: str, **fields: Any) -> tuple[str, str]:
    with transaction(sessions) as session:
        created = create_endpoint(
            session, vault, ADMIN, WebhookEndpointCreate(url=url, **fields), allow_private=True
        )
    return created.id, created.secret


def _event(sessions: sessionmaker[Session], event_type: str, object_id: str, n: int = 0, **kw: Any) -> str:
    with transaction(sessions) as session:
        return record_event(session, event_type, data={"id": object_id, "n": n}, object_id=object_id,
                            object_type=event_type.split(".")[0], **kw)  # fmt: skip


def _worker(sessions: sessionmaker[Session], vault: Vault, clock: Clock, **kw: Any) -> DeliveryWorker:
    return DeliveryWorker(sessions, vault, allow_private=True, now=clock, **kw)


def _deliveries(sessions: sessionmaker[Session]) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


async def test_signed_delivery_verifies_and_the_secret_is_sealed(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    endpoint_id, secret = _endpoint(sessions, vault, receiver.url)
    receiver.secret = secret
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    event_id = _event(sessions, "bill.created", "bill_1")
    assert await _worker(sessions, vault, clock).run_once() == 1
    [got] = receiver.requests
    assert got.verified and got.status == 200 and got.webhook_id == event_id
    assert got.payload["type"] == "bill.created" and got.payload["data"] == {"id": "bill_1", "n": 0}
    [delivery] = _deliveries(sessions)
    assert (delivery.status, delivery.attempt_count, delivery.next_attempt_at) == ("succeeded", 1, None)
    with sessions() as session:
        entry = session.scalars(select(VaultEntry).where(VaultEntry.owner_id == endpoint_id)).one()
        assert secret.encode() not in entry.ciphertext and secret[6:].encode() not in entry.ciphertext
        row = session.get(WebhookEndpoint, endpoint_id)
        assert row is not None and secret not in repr(row.__dict__)


async def test_rotation_signs_with_both_secrets_for_a_while(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    endpoint_id, old = _endpoint(sessions, vault, receiver.url)
    with transaction(sessions) as session:
        new = rotate_secret(session, vault, ADMIN, endpoint_id).secret
    assert new != old
    for secret in (old, new):  # receivers on either secret accept the message
        receiver.secret = secret
        _event(sessions, "bill.updated", f"bill_{secret[-6:]}")
        await _worker(sessions, vault, clock).run_once()
        assert receiver.requests[-1].verified


async def test_retries_follow_the_schedule_then_fail(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    _, receiver.secret = _endpoint(sessions, vault, receiver.url)
    receiver.status_for = lambda n, wid: 500
    _event(sessions, "payment.created", "pay_1")
    worker = _worker(sessions, vault, clock)
    assert await worker.run_once() == 1
    for attempt, delay in enumerate(RETRY_DELAYS, start=1):
        [delivery] = _deliveries(sessions)
        assert delivery.status == "pending" and delivery.attempt_count == attempt
        assert delivery.next_attempt_at == clock() + delay
        clock.advance(seconds=delay.total_seconds() - 1)
        assert await worker.run_once() == 0, "not before its time"
        clock.advance(seconds=1)
        assert await worker.run_once() == 1
    [delivery] = _deliveries(sessions)
    assert (delivery.status, delivery.attempt_count, delivery.next_attempt_at) == (
        "failed",
        MAX_ATTEMPTS,
        None,
    )
    assert len(receiver.requests) == MAX_ATTEMPTS == 10
    with sessions() as session:
        attempts = list(session.scalars(select(WebhookDeliveryAttempt)))
    assert len(attempts) == 10 and {a.response_status for a in attempts} == {500}
    assert all(a.error == "endpoint answered HTTP 500" for a in attempts)


async def test_events_of_one_object_arrive_in_order_while_others_proceed(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    _, receiver.secret = _endpoint(sessions, vault, receiver.url)
    first = _event(sessions, "bill.created", "bill_a", 1)
    later = [_event(sessions, "bill.updated", "bill_a", n) for n in (2, 3)]
    other = _event(sessions, "bill.created", "bill_b", 1)
    receiver.status_for = lambda n, wid: 500 if wid == first else 200
    worker = _worker(sessions, vault, clock)
    await worker.run_until_idle()
    # bill_a's first event is retrying, so its later ones wait; bill_b is not held up.
    assert sorted(r.webhook_id for r in receiver.requests) == sorted([first, other])
    clock.advance(seconds=5)
    receiver.status_for = lambda n, wid: 200
    await worker.run_until_idle()
    arrived = [r.webhook_id for r in receiver.delivered()]
    assert sorted(arrived) == sorted([other, first, *later])
    assert [wid for wid in arrived if wid != other] == [first, *later]  # bill_a's, in order


async def test_timeout_is_a_failed_attempt(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    _endpoint(sessions, vault, "http://127.0.0.1:9/hooks")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    _event(sessions, "invoice.paid", "inv_1")
    await _worker(sessions, vault, clock, transport=httpx.MockTransport(slow)).run_once()
    [delivery] = _deliveries(sessions)
    assert delivery.status == "pending" and delivery.next_attempt_at == clock() + RETRY_DELAYS[0]
    with sessions() as session:
        attempt = session.scalars(select(WebhookDeliveryAttempt)).one()
    assert attempt.error == "no response within 10 s" and attempt.response_status is None


async def test_an_endpoint_failing_for_five_days_is_disabled_with_an_event(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    failing_id, _ = _endpoint(sessions, vault, "http://127.0.0.1:9/nothing-listens")
    watcher_id, receiver.secret = _endpoint(sessions, vault, receiver.url, events=["webhook_endpoint.*"])
    worker = _worker(sessions, vault, clock)
    for day in range(6):
        _event(sessions, "bill.updated", f"bill_{day}")
        await worker.run_until_idle()
        clock.advance(days=1)
        await worker.run_until_idle()
    with sessions() as session:
        failing = session.get(WebhookEndpoint, failing_id)
        assert failing is not None and not failing.enabled and failing.disabled_reason
        disabled = session.scalars(select(Event).where(Event.type == "webhook_endpoint.disabled")).one()
        assert disabled.object_id == failing_id
    await worker.run_until_idle()
    assert [r.payload["type"] for r in receiver.delivered()] == ["webhook_endpoint.disabled"]
    assert watcher_id != failing_id


async def test_endpoint_filters_by_type_family_and_company(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    _, receiver.secret = _endpoint(sessions, vault, receiver.url, events=["payment.*", "invoice.paid"])
    _event(sessions, "bill.created", "bill_1")
    _event(sessions, "payment.sent", "pay_1")
    _event(sessions, "invoice.paid", "inv_1")
    _event(sessions, "invoice.updated", "inv_1")
    await _worker(sessions, vault, clock).run_until_idle()
    assert sorted(r.payload["type"] for r in receiver.delivered()) == ["invoice.paid", "payment.sent"]
