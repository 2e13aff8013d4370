"""A time filter whose value has no UTC equivalent (past the year 9999 or before the year 1 once its
offset is taken away) is the caller's mistake: 400 naming it, on every route that takes one."""

from __future__ import annotations

import json
from typing import Any

import pytest

OUT_OF_RANGE = ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00")
AT_THE_EDGES = ("9999-12-31T23:59:59Z", "9999-12-31T23:00:00-00:59", "0001-01-01T00:00:00Z",
                "0001-01-01T00:30:00+00:30")  # fmt: skip


def _time_filters(client: Any) -> list[tuple[str, str]]:
    """(path, parameter) of every GET route's date-time query parameter, from the OpenAPI document."""
    found = []
    for path, operations in client.app.openapi()["paths"].items():
        for parameter in operations.get("get", {}).get("parameters", []):
            if parameter["in"] == "query" and '"date-time"' in json.dumps(parameter["schema"]):
                found.append((path, parameter["name"]))
    return found


def test_every_time_filter_refuses_what_has_no_utc_time(world: dict[str, Any]) -> None:
    client = world["client"]
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    filters = _time_filters(client)
    assert {("/events", "created_from"), ("/events", "created_to"), ("/audit", "occurred_from"),
            ("/audit", "occurred_to"), ("/bills", "updated_since"), ("/companies", "updated_since"),
            ("/transactions", "updated_since")} <= set(filters)  # fmt: skip
    assert all("{" not in path for path, _ in filters)  # each is called as it is
    for path, name in filters:
        for value in OUT_OF_RANGE:
            response = client.get(path, params={name: value}, headers=headers)
            assert response.status_code == 400, (path, name, value, response.text)
            error = response.json()["error"]
            assert (error["code"], error["param"]) == ("invalid_request", name), (path, value, error)
            assert "UTC" in error["message"], error
        for value in AT_THE_EDGES:
            response = client.get(path, params={name: value}, headers=headers)
            assert response.status_code == 200, (path, name, value, response.text)


@pytest.mark.parametrize("path", ["/events", "/audit"])
def test_bounds_of_a_range_are_checked_each(world: dict[str, Any], path: str) -> None:
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    low, high = ("created_from", "created_to") if path == "/events" else ("occurred_from", "occurred_to")
    response = world["client"].get(
        path, params={low: "2026-01-01T00:00:00Z", high: "0001-01-01T00:00:00+01:00"}, headers=headers
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == high, response.text
