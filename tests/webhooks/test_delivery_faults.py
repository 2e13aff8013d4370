"""The delivery worker when things go wrong: an attempt's error is its own delivery's alone, an
attempt has a total deadline and reads a bounded answer, a stray failure does not disable an
endpoint, and a redelivery never runs beside an attempt in flight."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.services.events import record_event
from plooto_api.services.tokens import Principal
from plooto_api.services.webhooks import create_endpoint, redeliver_event
from plooto_api.store.database import transaction
from plooto_api.store.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from plooto_api.store.scope import AccessScope
from plooto_api.store.vault import Vault
from plooto_api.webhooks import RETRY_DELAYS, DeliveryWorker
from plooto_api.webhooks import delivery as delivery_module
from plooto_api.webhooks.schemas import WebhookEndpointCreate

from .conftest import Clock
from .receiver import Receiver

ADMIN = Principal(token_id="tok_admin", scopes=frozenset({"*"}), access=AccessScope())


@pytest.fixture
def vault() -> Vault:
    return Vault(os.urandom(32))


def _endpoint(sessions: sessionmaker[Session], vault: Vault, url: str, **fields: Any) -> str:
    with transaction(sessions) as session:
        return create_endpoint(
            session, vault, ADMIN, WebhookEndpointCreate(url=url, **fields), allow_private=True
        ).id


def _event(sessions: sessionmaker[Session], event_type: str, object_id: str) -> str:
    with transaction(sessions) as session:
        return record_event(session, event_type, data={"id": object_id}, object_id=object_id,
                            object_type=event_type.split(".")[0])  # fmt: skip


def _by_endpoint(
    sessions: sessionmaker[Session],
) -> dict[str, tuple[WebhookDelivery, list[WebhookDeliveryAttempt]]]:
    with sessions() as session:
        found = {}
        for delivery in session.scalars(select(WebhookDelivery)):
            attempts = session.scalars(
                select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.delivery_id == delivery.id)
            )
            found[delivery.endpoint_id] = (delivery, list(attempts))
        return found


async def test_a_url_the_client_refuses_fails_its_own_delivery_only(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock, receiver: Receiver
) -> None:
    good = _endpoint(sessions, vault, receiver.url)
    bad = _endpoint(sessions, vault, "http://127.0.0.1:9/placeholder")
    with transaction(sessions) as session:  # as stored before URLs were checked for control characters
        row = session.get(WebhookEndpoint, bad)
        assert row is not None
        row.url = "http://127.0.0.1:9/a\nb"  # (PostgreSQL stores no NUL: a newline, which httpx refuses too)
    with sessions() as session:
        secret_owner = session.get(WebhookEndpoint, good)
        assert secret_owner is not None
    from plooto_api.webhooks.delivery import signing_secrets

    with sessions() as session:
        receiver.secret = signing_secrets(vault, session, good, clock())[0]
    _event(sessions, "bill.created", "bill_1")
    assert await DeliveryWorker(sessions, vault, allow_private=True, now=clock).run_once() == 2
    found = _by_endpoint(sessions)
    assert found[good][0].status == "succeeded" and len(receiver.delivered()) == 1
    delivery, [attempt] = found[bad]
    assert delivery.status == "pending" and delivery.attempt_count == 1
    assert delivery.next_attempt_at == clock() + RETRY_DELAYS[0]
    assert attempt.error and "InvalidURL" in attempt.error


async def test_any_error_of_one_attempt_is_a_failed_attempt_of_that_delivery(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    good = _endpoint(sessions, vault, "http://good.test/hooks")
    bad = _endpoint(sessions, vault, "http://bad.test/hooks")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "bad.test":
            raise RuntimeError("something nobody expected")
        return httpx.Response(204)

    _event(sessions, "bill.created", "bill_1")
    worker = DeliveryWorker(
        sessions, vault, allow_private=True, now=clock, transport=httpx.MockTransport(answer)
    )
    await worker.run_once()
    found = _by_endpoint(sessions)
    assert found[good][0].status == "succeeded"
    delivery, [attempt] = found[bad]
    assert (delivery.status, delivery.attempt_count) == ("pending", 1)
    assert attempt.error == "RuntimeError: something nobody expected"


async def test_an_answer_trickling_in_is_cut_off_at_the_total_deadline(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    import asyncio

    _endpoint(sessions, vault, "http://slow.test/hooks")

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(100):  # each byte well within a per-read timeout, the whole far beyond it
            await asyncio.sleep(0.05)
            yield b"x"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    _event(sessions, "bill.created", "bill_1")
    worker = DeliveryWorker(sessions, vault, allow_private=True, now=clock, timeout=0.3,
                            transport=httpx.MockTransport(answer))  # fmt: skip
    await worker.run_once()
    [(delivery, [attempt])] = _by_endpoint(sessions).values()
    assert delivery.status == "pending" and attempt.error == "no response within 0.3 s"
    assert attempt.duration_ms is not None and attempt.duration_ms < 4000


async def test_only_the_start_of_a_large_answer_is_read(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    _endpoint(sessions, vault, "http://big.test/hooks")
    chunks_read = 0

    async def huge() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        for _ in range(1000):
            chunks_read += 1
            yield b"x" * 16384

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=huge())

    _event(sessions, "bill.created", "bill_1")
    worker = DeliveryWorker(
        sessions, vault, allow_private=True, now=clock, transport=httpx.MockTransport(answer)
    )
    await worker.run_once()
    [(delivery, _)] = _by_endpoint(sessions).values()
    assert delivery.status == "succeeded"
    assert chunks_read * 16384 <= delivery_module.MAX_RESPONSE_BYTES + 16384


async def test_a_stray_failure_after_a_quiet_spell_does_not_disable_the_endpoint(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    endpoint_id = _endpoint(sessions, vault, "http://127.0.0.1:9/nothing-listens")
    worker = DeliveryWorker(sessions, vault, allow_private=True, now=clock)
    _event(sessions, "bill.updated", "bill_1")
    await worker.run_until_idle()
    for delay in RETRY_DELAYS:  # the delivery fails its whole schedule (about three days)
        clock.advance(seconds=delay.total_seconds())
        await worker.run_until_idle()
    [(delivery, attempts)] = _by_endpoint(sessions).values()
    assert delivery.status == "failed" and len(attempts) == 10
    clock.advance(days=3)  # nothing for it to deliver for days; then one blip
    _event(sessions, "bill.updated", "bill_2")
    await worker.run_until_idle()
    with sessions() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None and endpoint.enabled and endpoint.disabled_reason is None
        assert endpoint.failing_since == clock()  # a new streak starts
        assert not session.scalars(select(Event).where(Event.type == "webhook_endpoint.disabled")).all()


async def test_a_redelivery_waits_for_the_attempt_in_flight(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    _endpoint(sessions, vault, "http://hooks.test/x")
    event_id = _event(sessions, "bill.created", "bill_1")
    in_flight = max_in_flight = sent = 0
    other: DeliveryWorker

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, max_in_flight, sent
        in_flight += 1
        sent += 1
        max_in_flight = max(max_in_flight, in_flight)
        if sent == 1:  # while this first attempt is in flight: redeliver, and another worker runs
            with transaction(sessions) as session:
                event = session.scalars(select(Event).where(Event.id == event_id)).one()
                [queued] = redeliver_event(session, ADMIN, event, now=clock())
                queued_id = queued.id
            assert await other.run_once() == 0
            assert not await other.deliver_now(queued_id)
        in_flight -= 1
        return httpx.Response(200)

    transport = httpx.MockTransport(answer)
    worker = DeliveryWorker(sessions, vault, allow_private=True, now=clock, transport=transport)
    other = DeliveryWorker(sessions, vault, allow_private=True, now=clock, transport=transport)
    # The attempt in flight, then the redelivery once it has ended and been recorded (never beside it).
    assert await worker.run_once() == 2
    [(delivery, attempts)] = _by_endpoint(sessions).values()
    assert (delivery.status, delivery.attempt_count, len(attempts)) == ("succeeded", 1, 2)
    assert sent == 2 and max_in_flight == 1


async def test_a_delivery_is_leased_when_its_attempt_starts_so_slow_answers_outlast_no_lease(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    # A worker leased a whole batch (100) for LEASE and sent it 16 at a time: with slow answers the
    # last leases ran out before their turn, and a second gateway's worker sent those again (every
    # delivery 2 to 5 times, none recorded as succeeded). A delivery is now claimed as its attempt
    # starts: its lease holds for as long as its attempt runs, however long its batch takes.
    _endpoint(sessions, vault, "http://hooks.test/slow")
    events = [_event(sessions, "bill.created", f"bill_{n}") for n in range(12)]
    sent: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        event_id = request.headers["webhook-id"]
        sent.append(event_id)
        with sessions() as session:
            delivery = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)
            ).one()
            assert delivery.next_attempt_at is not None and delivery.next_attempt_at > clock(), (
                "lease ran out"
            )
        clock.advance(seconds=25)  # a slow answer, by the worker's clock
        return httpx.Response(200)

    worker = DeliveryWorker(sessions, vault, allow_private=True, now=clock, transport=httpx.MockTransport(answer),
                            concurrency=2)  # fmt: skip
    assert await worker.run_until_idle() == 12
    assert sorted(sent) == sorted(events)  # each once
    with sessions() as session:
        assert {d.status for d in session.scalars(select(WebhookDelivery))} == {"succeeded"}


async def test_a_slow_endpoint_holds_only_its_own_slots(
    sessions: sessionmaker[Session], vault: Vault, clock: Clock
) -> None:
    # One endpoint timing out held the whole batch: the others' deliveries waited for its slowest answer.
    import asyncio

    _endpoint(sessions, vault, "http://hooks.test/slow")
    for n in range(10):
        _event(sessions, "bill.created", f"bill_{n}")
    fast = _endpoint(sessions, vault, "http://hooks.test/fast", events=["invoice.paid"])
    _event(sessions, "invoice.paid", "inv_1")
    release = asyncio.Event()
    slow_in_flight = most_slow_in_flight = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal slow_in_flight, most_slow_in_flight
        if request.url.path == "/fast":
            with sessions() as session:  # the slow ones are still in flight
                assert not session.scalars(
                    select(WebhookDelivery).where(WebhookDelivery.status == "succeeded")
                ).all()
            return httpx.Response(200)
        slow_in_flight += 1
        most_slow_in_flight = max(most_slow_in_flight, slow_in_flight)
        await release.wait()
        slow_in_flight -= 1
        return httpx.Response(200)

    worker = DeliveryWorker(
        sessions, vault, allow_private=True, now=clock, transport=httpx.MockTransport(answer)
    )
    run = asyncio.create_task(worker.run_until_idle())
    for _ in range(500):  # until the fast endpoint's delivery is recorded, while the slow ones wait
        await asyncio.sleep(0.01)  # yielding to the worker's tasks, not waiting for time to pass
        if _by_endpoint(sessions)[fast][0].status == "succeeded":
            break
    assert _by_endpoint(sessions)[fast][0].status == "succeeded"
    release.set()
    await run
    assert most_slow_in_flight == delivery_module.PER_ENDPOINT
    with sessions() as session:
        assert {d.status for d in session.scalars(select(WebhookDelivery))} == {"succeeded"}
