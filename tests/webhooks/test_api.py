"""The events and webhook endpoint API: listing and filters, endpoint lifecycle, URL checks, the
one-time secret, test sends, deliveries with attempts, redelivery, scopes and tenant limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from standardwebhooks import Webhook

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.services.events import record_event
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.base import new_id
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.vault import generate_key
from plooto_api.webhooks import check_target_url
from plooto_api.webhooks.targets import InvalidWebhookUrl

from .receiver import Receiver


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = create_db_engine(database_url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        conn = models.Connection(id=new_id("conn"), username="a@firm.test", upstream_url="http://portal.test")
        session.add(conn)
        session.flush()
        companies = []
        for label in ("a", "b"):
            company = models.Company(id=new_id("co"), connection_id=conn.id, upstream_id=f"C-{label}",
                                     name=f"Company {label}", country="CA", base_currency="CAD")  # fmt: skip
            session.add(company)
            companies.append(company.id)
        session.flush()
        tokens = {
            "admin": create_token(session, scopes=["*"])[1],
            "reader": create_token(session, scopes=["events:read", "webhooks:read"])[1],
            "company_a": create_token(session, scopes=["*"], company_ids=[companies[0]])[1],
        }
        events = []
        for n in range(30):
            company_id = companies[n % 2]
            event_type = ["bill.created", "bill.updated", "payment.sent"][n % 3]
            events.append(record_event(session, event_type, data={"n": n}, company_id=company_id,
                                       connection_id=conn.id, object_id=f"obj_{n % 5}",
                                       object_type=event_type.split(".")[0]))  # fmt: skip
    engine.dispose()
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        vault_key=SecretStr(generate_key()), webhook_allow_private=True)  # fmt: skip
    with TestClient(create_app(settings, run_jobs=False)) as client:
        yield {"client": client, "tokens": tokens, "companies": companies, "events": events}


def _call(world: dict[str, Any], method: str, path: str, token: str = "admin", **kw: Any) -> Any:
    return world["client"].request(
        method, path, headers={"Authorization": f"Bearer {world['tokens'][token]}"}, **kw
    )


def test_events_list_pages_in_order_and_filters(world: dict[str, Any]) -> None:
    seen, cursor = [], None
    while True:
        body = _call(
            world, "GET", "/events", params={"limit": 7, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [e["id"] for e in body["data"]]
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert seen == world["events"]
    bills = _call(world, "GET", "/events", params={"type": "bill.*", "limit": 100}).json()["data"]
    assert len(bills) == 20 and {e["type"] for e in bills} == {"bill.created", "bill.updated"}
    two = _call(
        world, "GET", "/events", params=[("type", "payment.sent"), ("type", "bill.created"), ("limit", 100)]
    )
    assert len(two.json()["data"]) == 20
    company_a = world["companies"][0]
    mine = _call(world, "GET", "/events", params={"company": company_a, "object_id": "obj_0", "limit": 100})
    assert {(e["company_id"], e["object_id"]) for e in mine.json()["data"]} == {(company_a, "obj_0")}
    first = _call(world, "GET", f"/events/{world['events'][0]}").json()
    assert first["data"] == {"n": 0} and first["object"] == "event"
    window = _call(
        world,
        "GET",
        "/events",
        params={"created_from": first["created_at"], "created_to": first["created_at"]},
    )
    assert world["events"][0] in [e["id"] for e in window.json()["data"]]
    assert (
        _call(world, "GET", "/events", params={"cursor": "nope"}).json()["error"]["code"] == "invalid_cursor"
    )
    assert _call(world, "GET", "/events/evt_missing").status_code == 404


def test_a_client_polls_events_from_the_last_one_it_saw(world: dict[str, Any]) -> None:
    # The last page had no cursor, so a client could only poll by created_from, and creation times
    # need not follow commit order: it missed events.
    last = _call(world, "GET", "/events", params={"limit": 100}).json()
    assert not last["has_more"] and [e["id"] for e in last["data"]] == world["events"]
    cursor = last["next_cursor"]
    assert cursor
    nothing = _call(world, "GET", "/events", params={"cursor": cursor}).json()
    assert nothing["data"] == [] and nothing["next_cursor"] == cursor and not nothing["has_more"]
    with transaction(world["client"].app.state.sessions) as session:
        new = record_event(session, "bill.created", data={"n": 30}, company_id=world["companies"][0],
                           object_id="obj_new", object_type="bill")  # fmt: skip
    after = _call(world, "GET", "/events", params={"cursor": cursor}).json()
    assert [e["id"] for e in after["data"]] == [new] and after["next_cursor"] != cursor


def test_a_company_token_sees_only_its_events(world: dict[str, Any]) -> None:
    data = _call(world, "GET", "/events", token="company_a", params={"limit": 100}).json()["data"]
    assert len(data) == 15 and {e["company_id"] for e in data} == {world["companies"][0]}
    other = world["events"][1]  # company b
    assert _call(world, "GET", f"/events/{other}", token="company_a").status_code == 404


def test_events_show_only_the_objects_a_token_may_read(world: dict[str, Any]) -> None:
    # An `events:read` token read whole customers (names, e-mails, addresses) in `customer.*` events
    # though `GET /customers` refused it.
    with transaction(world["client"].app.state.sessions) as session:
        token = create_token(session, scopes=["bills:read", "events:read"])[1]
    world["tokens"]["bills_events"] = token
    data = _call(world, "GET", "/events", token="bills_events", params={"limit": 100}).json()["data"]
    assert data and {e["type"].split(".")[0] for e in data} == {"bill"}
    payment = next(
        e for e in world["events"] if _call(world, "GET", f"/events/{e}").json()["type"] == "payment.sent"
    )
    assert _call(world, "GET", f"/events/{payment}", token="bills_events").status_code == 404
    everything = _call(world, "GET", "/events", params={"limit": 100}).json()["data"]
    assert len(everything) == len(world["events"])  # a `*` token reads them all


def test_endpoint_lifecycle_secret_shown_once(world: dict[str, Any], receiver: Receiver) -> None:
    created = _call(world, "POST", "/webhook_endpoints", json={"url": receiver.url, "events": ["bill.*"]})
    assert created.status_code == 201
    endpoint = created.json()
    assert (
        endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["bill.*"] and endpoint["enabled"]
    )
    one = _call(world, "GET", f"/webhook_endpoints/{endpoint['id']}").json()
    assert "secret" not in one and one["url"] == receiver.url
    listed = _call(world, "GET", "/webhook_endpoints", token="reader").json()["data"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    assert (
        _call(world, "POST", "/webhook_endpoints", token="reader", json={"url": receiver.url}).status_code
        == 403
    )

    rotated = _call(world, "POST", f"/webhook_endpoints/{endpoint['id']}/rotate_secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]

    receiver.secret = rotated["secret"]
    tested = _call(world, "POST", f"/webhook_endpoints/{endpoint['id']}/test").json()
    assert tested["status"] == "succeeded" and tested["attempts"][0]["response_status"] == 200
    [request] = receiver.requests
    assert request.verified and request.payload["type"] == "webhook_endpoint.test"
    Webhook(endpoint["secret"])  # the old secret still signs beside the new one for a while

    # The endpoint subscribed after the fixture's events; redelivery queues one for it now.
    requeued = _call(world, "POST", f"/events/{world['events'][0]}/redeliver").json()["data"]
    assert [(d["endpoint_id"], d["status"]) for d in requeued] == [(endpoint["id"], "pending")]
    deliveries = _call(world, "GET", f"/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]
    assert {d["event_type"] for d in deliveries} == {"webhook_endpoint.test", "bill.created"}
    pending = _call(
        world, "GET", f"/webhook_endpoints/{endpoint['id']}/deliveries", params={"status": "pending"}
    )
    assert [d["event_id"] for d in pending.json()["data"]] == [world["events"][0]]

    assert _call(world, "DELETE", f"/webhook_endpoints/{endpoint['id']}").status_code == 204
    assert _call(world, "GET", f"/webhook_endpoints/{endpoint['id']}").status_code == 404
    with world["client"].app.state.sessions() as session:  # type: ignore[attr-defined]
        assert not session.scalars(
            select(models.VaultEntry).where(models.VaultEntry.owner_id == endpoint["id"])
        ).all()


def test_new_events_fan_out_to_matching_endpoints(world: dict[str, Any], receiver: Receiver) -> None:
    endpoint = _call(world, "POST", "/webhook_endpoints", json={"url": receiver.url, "events": ["payment.*"],
                                                                "companies": [world["companies"][1]]}).json()  # fmt: skip
    sessions = world["client"].app.state.sessions  # type: ignore[attr-defined]
    with transaction(sessions) as session:
        for company in world["companies"]:
            for event_type in ("payment.sent", "bill.created"):
                record_event(session, event_type, data={}, company_id=company, object_id="x")
    with sessions() as session:
        deliveries = session.scalars(
            select(models.WebhookDelivery).where(models.WebhookDelivery.endpoint_id == endpoint["id"])
        ).all()
        assert len(deliveries) == 1


def test_an_endpoint_hears_only_the_objects_its_maker_may_read(
    world: dict[str, Any], receiver: Receiver
) -> None:
    # An endpoint for every event, made by a token that reads bills only, received whole customers
    # and connections in their events: a way round the token's scopes.
    with transaction(world["client"].app.state.sessions) as session:
        world["tokens"]["bills_hooks"] = create_token(session, scopes=["bills:read", "webhooks:write"])[1]
    endpoint = _call(world, "POST", "/webhook_endpoints", token="bills_hooks", json={"url": receiver.url})
    assert endpoint.status_code == 201 and endpoint.json()["events"] is None
    everything = _call(world, "POST", "/webhook_endpoints", json={"url": receiver.url}).json()
    sessions = world["client"].app.state.sessions  # type: ignore[attr-defined]
    with transaction(sessions) as session:
        company = world["companies"][0]
        for event_type in ("bill.created", "customer.created", "payment.sent"):
            record_event(session, event_type, data={}, company_id=company, object_id="x",
                         object_type=event_type.split(".")[0])  # fmt: skip
        record_event(session, "connection.healthy", data={}, object_type="connection", object_id="conn_x")

    def heard(endpoint_id: str) -> list[str]:
        with sessions() as session:
            return sorted(session.scalars(
                select(models.Event.type).join(models.WebhookDelivery)
                .where(models.WebhookDelivery.endpoint_id == endpoint_id)
            ))  # fmt: skip

    assert heard(endpoint.json()["id"]) == ["bill.created"]
    assert heard(everything["id"]) == [
        "bill.created",
        "connection.healthy",
        "customer.created",
        "payment.sent",
    ]


def test_a_company_token_reads_the_events_of_its_own_endpoints(
    world: dict[str, Any], receiver: Receiver
) -> None:
    # `webhook_endpoint.disabled` is of no company, so a company-limited token never saw its own
    # endpoint's, though it reads (and may re-enable) the endpoint.
    mine = _call(world, "POST", "/webhook_endpoints", token="company_a", json={"url": receiver.url}).json()
    theirs = _call(world, "POST", "/webhook_endpoints", json={"url": receiver.url}).json()
    sessions = world["client"].app.state.sessions  # type: ignore[attr-defined]
    with transaction(sessions) as session:
        disabled = {
            endpoint["id"]: record_event(session, "webhook_endpoint.disabled", data={"id": endpoint["id"]},
                                         object_type="webhook_endpoint", object_id=endpoint["id"])
            for endpoint in (mine, theirs)
        }  # fmt: skip
    seen = _call(world, "GET", "/events", token="company_a", params={"limit": 100}).json()["data"]
    assert disabled[mine["id"]] in [e["id"] for e in seen]
    assert disabled[theirs["id"]] not in [e["id"] for e in seen]
    assert {e["company_id"] for e in seen} == {world["companies"][0], None}
    assert _call(world, "GET", f"/events/{disabled[theirs['id']]}", token="company_a").status_code == 404
    assert _call(world, "GET", f"/events/{disabled[mine['id']]}", token="company_a").status_code == 200


def test_endpoint_input_is_checked(world: dict[str, Any]) -> None:
    def error(body: dict[str, Any], token: str = "admin") -> tuple[int, str, str | None]:
        response = _call(world, "POST", "/webhook_endpoints", token=token, json=body)
        err = response.json()["error"]
        return response.status_code, err["code"], err["param"]

    assert error({"url": "ftp://example.com/x"}) == (400, "invalid_url", "url")
    assert error({"url": "https://user:pw@example.com/x"}) == (400, "invalid_url", "url")
    assert error({"url": "https:///nohost"}) == (400, "invalid_url", "url")
    assert error({"url": "https://example.com/x", "events": ["Not A Type!"]})[2] == "events"
    assert error({"url": "https://example.com/x", "companies": ["co_nope"]})[2] == "companies"
    assert (
        error({"url": "https://example.com/x", "companies": [world["companies"][1]]}, "company_a")[2]
        == "companies"
    )
    assert error({"nope": 1})[0] == 400
    limited = _call(
        world, "POST", "/webhook_endpoints", token="company_a", json={"url": "https://example.com/x"}
    )
    assert limited.status_code == 201 and limited.json()["companies"] == [world["companies"][0]]
    # Endpoints of a limited token are its own: the admin sees them, another limited token would not.
    assert len(_call(world, "GET", "/webhook_endpoints").json()["data"]) == 1


def test_private_targets_are_refused_unless_allowed() -> None:
    for url in ("http://127.0.0.1/x", "http://10.1.2.3/x", "http://[::1]/x", "http://169.254.169.254/latest",
                "http://localhost:8080/x", "http://[::ffff:192.168.0.1]/x", "http://0.0.0.0/"):  # fmt: skip
        with pytest.raises(InvalidWebhookUrl):
            check_target_url(url, allow_private=False)
    with pytest.raises(InvalidWebhookUrl, match="private"):
        check_target_url(
            "https://intranet.example/x", allow_private=False, resolve=lambda h, p: ["192.168.1.5"]
        )
    assert check_target_url(
        "https://hooks.example/x", allow_private=False, resolve=lambda h, p: ["93.184.216.34"]
    )
    assert check_target_url("http://127.0.0.1:9/x", allow_private=True)
