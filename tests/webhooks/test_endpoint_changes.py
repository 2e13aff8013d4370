"""Webhook endpoints through the API: URLs with control characters, a test send whose endpoint goes
away, changing and re-enabling an endpoint, redelivering a test event, subscriptions checked against
the event types the gateway emits, and connection events for a connection-limited token."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from plooto_api.services import webhooks as service
from plooto_api.services.events import record_event
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.database import transaction
from plooto_api.webhooks import DeliveryWorker

from . import test_api
from .receiver import Receiver

_call = test_api._call
world = test_api.world  # the API fixture: a gateway on a database with a connection and two companies


def _sessions(world: dict[str, Any]) -> Any:
    return world["client"].app.state.sessions


def _create(world: dict[str, Any], token: str = "admin", **body: Any) -> Any:
    return _call(world, "POST", "/webhook_endpoints", token=token, json=body)


def _error(response: Any) -> tuple[int, str, str | None]:
    err = response.json()["error"]
    return response.status_code, err["code"], err["param"]


def test_urls_with_control_characters_or_spaces_are_refused(world: dict[str, Any]) -> None:
    for url in ("http://127.0.0.1:9/a\nb", "http://127.0.0.1:9/a\x00b", " http://127.0.0.1:9/x",
                "http://127.0.0.1:9/a b", "http://127.0.0.1:9/x\t", "http://127.0.0.1:9/a\rb"):  # fmt: skip
        assert _error(_create(world, url=url)) == (400, "invalid_url", "url"), repr(url)


def test_a_test_send_whose_endpoint_is_deleted_in_flight_answers_404(
    world: dict[str, Any],
    receiver: Receiver,
) -> None:
    created = _create(world, url=receiver.url).json()
    receiver.secret = created["secret"]
    ctx = world["client"].app.state.ctx

    def delete_then_answer(n: int, webhook_id: str) -> int:
        with transaction(ctx.sessions) as session:
            service.delete_endpoint(session, ctx.vault, _admin(), created["id"])
        return 200

    receiver.status_for = delete_then_answer
    response = _call(world, "POST", f"/webhook_endpoints/{created['id']}/test")
    assert _error(response)[:2] == (404, "not_found")
    assert len(receiver.requests) == 1


def _admin() -> Any:
    from plooto_api.services.tokens import Principal
    from plooto_api.store.scope import AccessScope

    return Principal(token_id="tok_admin", scopes=frozenset({"*"}), access=AccessScope())


async def test_an_endpoint_is_changed_and_re_enabled_and_its_pending_deliveries_go_out(
    world: dict[str, Any],
    receiver: Receiver,
) -> None:
    created = _create(world, url="http://127.0.0.1:9/old", enabled=False).json()
    receiver.secret = created["secret"]
    path = f"/webhook_endpoints/{created['id']}"
    changed = _call(
        world, "PATCH", path, json={"url": receiver.url, "events": ["bill.*"], "description": "ap"}
    )
    assert changed.status_code == 200
    body = changed.json()
    assert (body["url"], body["events"], body["description"], body["enabled"]) == (
        receiver.url, ["bill.*"], "ap", False
    )  # fmt: skip
    assert "secret" not in body
    # Checked as on creation; only the fields given change.
    assert _error(_call(world, "PATCH", path, json={"url": "ftp://x.test/"})) == (400, "invalid_url", "url")
    assert _error(_call(world, "PATCH", path, json={"events": ["bill.nope"]}))[::2] == (400, "events")
    assert _error(_call(world, "PATCH", path, json={"companies": []}))[::2] == (400, "companies")
    assert _call(world, "PATCH", path, token="reader", json={"enabled": True}).status_code == 403
    assert _call(world, "PATCH", "/webhook_endpoints/we_nope", json={"enabled": True}).status_code == 404
    assert _call(world, "GET", path).json()["url"] == receiver.url

    # As if disabled after days of failures, with a delivery left pending far out.
    sessions = _sessions(world)
    _call(world, "PATCH", path, json={"enabled": True})
    with transaction(sessions) as session:
        event_id = record_event(session, "bill.updated", data={"id": "bill_9"}, object_id="bill_9",
                                object_type="bill")  # fmt: skip
        row = session.get(models.WebhookEndpoint, created["id"])
        assert row is not None
        row.enabled, row.disabled_reason = False, "deliveries failed for 5 days"
        row.failing_since = utcnow() - timedelta(days=6)
        delivery = session.scalars(
            select(models.WebhookDelivery).where(models.WebhookDelivery.event_id == event_id)
        ).one()
        delivery.attempt_count, delivery.next_attempt_at = 3, utcnow() + timedelta(hours=20)
    worker = DeliveryWorker(sessions, world["client"].app.state.ctx.vault, allow_private=True)
    assert await worker.run_until_idle() == 0
    enabled = _call(world, "PATCH", path, json={"enabled": True}).json()
    assert enabled["enabled"] and enabled["disabled_reason"] is None
    with sessions() as session:
        row = session.get(models.WebhookEndpoint, created["id"])
        assert row is not None and row.failing_since is None
    assert await worker.run_until_idle() == 1
    assert [r.webhook_id for r in receiver.delivered()] == [event_id]


def test_a_redelivered_test_event_goes_to_its_own_endpoint_only(
    world: dict[str, Any],
    receiver: Receiver,
) -> None:
    first = _create(world, url=receiver.url).json()
    second = _create(world, url=receiver.url).json()
    receiver.secret = first["secret"]
    event_id = _call(world, "POST", f"/webhook_endpoints/{first['id']}/test").json()["event_id"]
    requeued = _call(world, "POST", f"/events/{event_id}/redeliver").json()["data"]
    assert [d["endpoint_id"] for d in requeued] == [first["id"]]
    assert _call(world, "GET", f"/webhook_endpoints/{second['id']}/deliveries").json()["data"] == []


def test_subscriptions_must_match_event_types_the_gateway_emits(world: dict[str, Any]) -> None:
    url = "http://127.0.0.1:9/x"
    for events in (["bill.nonexistent"], ["bills.*"], ["bill.created", "nope.*"]):
        assert _error(_create(world, url=url, events=events))[::2] == (400, "events"), events
    assert _error(_create(world, url=url, companies=[]))[::2] == (400, "companies")
    for events in (["transaction.*", "user.created", "company.updated", "vendor.*"],
                   ["sync_mapping.*", "fx_conversion.created", "connection.syncing", "connection.healthy"],
                   ["*"], ["bill.approval_updated", "webhook_endpoint.*"]):  # fmt: skip
        assert _create(world, url=url, events=events).status_code == 201, events


def test_a_connection_limited_endpoint_hears_its_own_connections_events(world: dict[str, Any]) -> None:
    sessions = _sessions(world)
    with transaction(sessions) as session:
        mine = session.scalars(select(models.Connection.id)).one()
        other = models.Connection(
            id=new_id("conn"), username="b@firm.test", upstream_url="http://portal.test"
        )
        session.add(other)
        session.flush()
        world["tokens"]["conn"] = create_token(session, scopes=["*"], connection_id=mine)[1]
    created = _create(world, token="conn", url="http://127.0.0.1:9/x", events=["connection.*"])
    assert created.status_code == 201
    endpoint_id = created.json()["id"]
    with transaction(sessions) as session:
        for connection_id in (mine, other.id):
            record_event(session, "connection.requires_action", data={"id": connection_id},
                         connection_id=connection_id, object_type="connection", object_id=connection_id)  # fmt: skip
    with sessions() as session:
        delivered = session.execute(
            select(models.Event.connection_id)
            .join(models.WebhookDelivery, models.WebhookDelivery.event_id == models.Event.id)
            .where(models.WebhookDelivery.endpoint_id == endpoint_id)
        ).all()
    assert [row[0] for row in delivered] == [mine]
    # Redelivery follows the same rule.
    with transaction(sessions) as session:
        events = list(
            session.scalars(select(models.Event).where(models.Event.type == "connection.requires_action"))
        )
        endpoint = session.get(models.WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        queued = service.requeue(session, events, [endpoint], utcnow())
        assert [d.event_id for d in queued] == [e.id for e in events if e.connection_id == mine]


def test_a_patch_that_changes_nothing_leaves_updated_at(world: dict[str, Any], receiver: Receiver) -> None:
    endpoint = _create(world, url=receiver.url, description="ledger").json()
    path = f"/webhook_endpoints/{endpoint['id']}"
    for body in ({}, {"description": "ledger", "url": receiver.url, "enabled": True}):
        same = _call(world, "PATCH", path, json=body)
        assert same.status_code == 200 and same.json()["updated_at"] == endpoint["updated_at"], body
    changed = _call(world, "PATCH", path, json={"description": "payables"}).json()
    assert changed["description"] == "payables" and changed["updated_at"] > endpoint["updated_at"]
