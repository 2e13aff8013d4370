"""The read API: every list and object endpoint, filters, cursors, scopes and tenant isolation."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from plooto_api.services.objects import RESOURCES
from plooto_api.store.pagination import encode_cursor


def _get(world: dict[str, Any], path: str, token: str = "admin", **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {world['tokens'][token]}"} if token else {}
    return world["client"].get(path, params=params, headers=headers)


def test_every_resource_lists_and_reads_by_id(world: dict[str, Any]) -> None:
    for resource in RESOURCES:
        response = _get(world, f"/{resource.path}", limit=100)
        assert response.status_code == 200, (resource.path, response.text)
        body = response.json()
        assert body["object"] == "list" and body["data"], resource.path
        assert {item["object"] for item in body["data"]} == {resource.object_type}
        first = body["data"][0]
        one = _get(world, f"/{resource.path}/{first['id']}")
        assert one.status_code == 200 and one.json() == first
    bill = _get(world, "/bills", limit=1).json()["data"][0]
    assert set(bill) >= {"id", "object", "company_id", "upstream_id", "created_at", "updated_at", "upstream",
                         "accounting_refs", "total", "amount_due", "approval", "line_items"}  # fmt: skip
    assert isinstance(bill["total"]["amount"], str)


def test_scopes_and_tokens(world: dict[str, Any]) -> None:
    assert _get(world, "/bills", token="").status_code == 401
    assert _get(world, "/bills", token="").json()["error"]["code"] == "missing_token"
    bad = world["client"].get("/bills", headers={"Authorization": "Bearer papi_not-a-real-token"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    assert _get(world, "/bills", token="bills_only").status_code == 200
    denied = _get(world, "/vendors", token="bills_only")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
    assert _get(world, "/connections", token="bills_only").status_code == 403


@pytest.mark.parametrize("token,tenant,other", [("company_a", "a", "b"), ("connection_b", "b", "a")])
def test_tenant_isolation_for_every_type(world: dict[str, Any], token: str, tenant: str, other: str) -> None:
    mine, theirs = world[tenant], world[other]
    for resource in RESOURCES:
        data = _get(world, f"/{resource.path}", token=token, limit=100).json()["data"]
        assert data, resource.path
        assert {item["company_id"] for item in data} == {mine["company"]}, resource.path
        foreign = next(o for o in theirs["objects"] if o.object == resource.object_type)
        response = _get(world, f"/{resource.path}/{foreign.id}", token=token)
        assert response.status_code == 404, resource.path  # not 403: another tenant's data does not exist
        assert foreign.upstream_id not in response.text
    connections = _get(world, "/connections", token=token).json()["data"]
    assert [c["id"] for c in connections] == [mine["connection"]]
    assert _get(world, f"/connections/{theirs['connection']}", token=token).status_code == 404


def test_cursor_walk_is_complete_stable_and_ordered(world: dict[str, Any]) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"company": world["a"]["company"], "limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = _get(world, "/bills", **params).json()
        seen += [item["id"] for item in body["data"]]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            break
        cursor = body["next_cursor"]
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == len(world["a"]["bills"]) + 1


def test_bill_filters(world: dict[str, Any]) -> None:
    a = world["a"]
    company = a["company"]

    def ids(**params: Any) -> set[str]:
        return {b["id"] for b in _get(world, "/bills", company=company, limit=100, **params).json()["data"]}

    extra = a["bills"]
    assert ids(status="paid") == {b.id for b in extra if b.status == "paid"}
    assert ids(approval_status="pending") == {b.id for b in extra if b.approval.status == "pending"} | {
        next(o.id for o in a["objects"] if o.object == "bill")
    }
    assert ids(vendor=a["vendor"]) >= {b.id for b in extra if b.vendor_id}
    assert ids(currency="USD") == {b.id for b in extra if b.total.currency == "USD"}
    window = ids(due_date_from="2026-12-05", due_date_to="2026-12-07")
    assert window == {b.id for b in extra if date(2026, 12, 5) <= b.due_date <= date(2026, 12, 7)}  # type: ignore[operator]
    assert ids(amount_min="150.00", amount_max="170") == {
        b.id for b in extra if Decimal(150) <= b.total.amount <= Decimal(170)
    }
    assert ids(updated_since="2000-01-01T00:00:00Z") and not ids(updated_since="2100-01-01T00:00:00Z")
    assert _get(world, "/payments", status="in_transit").json()["data"]
    assert not _get(world, "/payments", status="failed").json()["data"]
    assert _get(world, "/invoices", customer=next(o.id for o in a["objects"] if o.object == "customer"),
                ).json()["data"]  # fmt: skip


@pytest.mark.parametrize(
    "path,params,code",
    [
        ("/bills", {"limit": 0}, "invalid_request"),
        ("/bills", {"limit": 101}, "invalid_request"),
        ("/bills", {"limit": "ten"}, "invalid_request"),
        ("/bills", {"cursor": "garbage"}, "invalid_cursor"),
        # Another list's cursor: a payments cursor answered an empty last page of bills.
        ("/bills", {"cursor": encode_cursor("pay_01m98reynznnar3q1rzncqranf", "payments")}, "invalid_cursor"),
        ("/events", {"cursor": encode_cursor("bill_01m98reynznnar3q1rzncqranf", "bills")}, "invalid_cursor"),
        # Altered cursors of the lists keyed by a sequence: past a 64-bit column, or a digit that is not ASCII.
        ("/events", {"cursor": encode_cursor("9" * 30, "events")}, "invalid_cursor"),
        ("/audit", {"cursor": encode_cursor("\u00b2", "audit_entries")}, "invalid_cursor"),
        # PostgreSQL stores no NUL in text: a filter or an id holding one was a 500 there (schemathesis).
        ("/transactions", {"company": "\x004x"}, "invalid_request"),
        ("/bills/bill_%00x", {}, "invalid_request"),
        ("/bills", {"nonsense": "1"}, "invalid_request"),
        ("/bills", {"updated_since": "2026-01-01T00:00:00"}, "invalid_request"),
        ("/bills", {"updated_since": "yesterday"}, "invalid_request"),
        ("/bills", {"due_date_from": "2026-13-45"}, "invalid_request"),
        ("/bills", {"amount_min": "1.001"}, "invalid_request"),
        ("/bills", {"amount_min": "NaN"}, "invalid_request"),
        ("/payments", {"amount_min": "1.5224301404072969e+171"}, "invalid_request"),  # found by schemathesis
        ("/bills/" + "x" * 5000, {}, "not_found"),
        ("/vendors/ven_doesnotexist", {}, "not_found"),
        ("/payments", {"network_connected": "maybe"}, "invalid_request"),
        ("/bills", {"status": "unpaid"}, "invalid_request"),  # a status the product does not have
        ("/bills", {"approval_status": "Approved"}, "invalid_request"),  # the portal's spelling, not ours
        ("/payments", {"method": "bitcoin"}, "invalid_request"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    world: dict[str, Any], path: str, params: dict[str, Any], code: str
) -> None:
    response = _get(world, path, **params)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["request_id"]


def test_a_misspelt_status_is_refused_with_the_values_it_may_take(world: dict[str, Any]) -> None:
    # Matching nothing would read as "no such bills"; the error says what the filter takes instead.
    response = _get(world, "/bills", status="pending")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "status"
    assert "'pending_approval'" in error["message"] and "'void'" in error["message"]
    assert _get(world, "/bills", status="pending_approval").status_code == 200
    schema = world["client"].get("/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/bills"]["get"]["parameters"]}
    enum = next(s["enum"] for s in parameters["status"]["schema"]["anyOf"] if "enum" in s)
    assert "pending_approval" in enum and "unpaid" not in enum
    # The object type of a sync mapping is a closed set too.
    mappings = _get(world, "/sync_mappings", object_type="bills")
    assert mappings.status_code == 400 and mappings.json()["error"]["param"] == "object_type"
    assert _get(world, "/sync_mappings", object_type="bill").status_code == 200


def test_every_route_refuses_a_query_parameter_it_does_not_take(world: dict[str, Any]) -> None:
    # A misspelt filter must not be ignored: `/events?created_after=…` answered every event, as if filtered.
    schema = world["client"].get("/openapi.json").json()
    routes = [path for path, operations in schema["paths"].items() if "get" in operations]
    assert "/events" in routes and "/connections" in routes and "/bills/{object_id}" in routes
    for path in routes:
        concrete = path.replace("{", "").replace("}", "")  # ids that match nothing: checked before the lookup
        response = _get(world, concrete, created_after="2026-01-01T00:00:00Z")
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_request", "created_after"), path
        assert "unknown query parameter" in error["message"]
    # What a route does take still works, and the message names it.
    assert _get(world, "/events", created_from="2026-01-01T00:00:00Z").status_code == 200
    assert "created_from" in _get(world, "/events", created_after="x").json()["error"]["message"]
    assert _get(world, "/bills", status="paid", limit=5).status_code == 200


def test_a_nul_character_in_a_body_is_never_a_500(world: dict[str, Any]) -> None:
    # PostgreSQL stores no NUL in text (SQLite does): a token named "a\u0000b" was a 500 there.
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    response = world["client"].post(
        "/tokens", json={"scopes": ["bills:read"], "name": "a\u0000b"}, headers=headers
    )
    if world["client"].app.state.engine.dialect.name == "postgresql":
        assert response.status_code == 400, response.text
        assert (
            response.json()["error"]["code"] == "invalid_request"
            and "NUL" in response.json()["error"]["message"]
        )
    else:
        assert response.status_code == 201, response.text
