"""The /tokens routes: create (secret once), no escalation, tenant limits, list/get, revoke, errors."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from httpx import Response

from plooto_api.services.tokens import TOKEN_PREFIX


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _secret(world: dict[str, Any], token: str) -> str:
    return world["tokens"].get(token, token)  # a world token's name, or a secret itself


def _post(world: dict[str, Any], body: Any, token: str = "admin") -> Response:
    return world["client"].post("/tokens", json=body, headers=_auth(_secret(world, token)))


def _get(world: dict[str, Any], path: str, token: str = "admin", **params: Any) -> Response:
    return world["client"].get(path, params=params, headers=_auth(_secret(world, token)))


def _delete(world: dict[str, Any], token_id: str, token: str = "admin") -> Response:
    return world["client"].delete(f"/tokens/{token_id}", headers=_auth(_secret(world, token)))


def _id_of(world: dict[str, Any], token: str) -> str:
    prefix = _secret(world, token)[: len(TOKEN_PREFIX) + 6]
    listed = _get(world, "/tokens", limit=100).json()["data"]
    return next(t["id"] for t in listed if t["prefix"] == prefix)


def _error(response: Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"], error
    if param is not None:
        assert error["param"] == param, error


def test_create_shows_the_secret_once_and_it_works_as_a_bearer_token(world: dict[str, Any]) -> None:
    created = _post(world, {"scopes": ["bills:read", "vendors:read"], "name": "reporting"})
    assert created.status_code == 201, created.text
    token = created.json()
    secret = token.pop("secret")
    assert secret.startswith(TOKEN_PREFIX) and secret.startswith(token["prefix"])
    assert token["object"] == "api_token" and token["kind"] == "api" and token["name"] == "reporting"
    assert token["scopes"] == ["bills:read", "vendors:read"]
    assert token["companies"] is None and token["connection_id"] is None and token["expires_at"] is None
    assert token["revoked_at"] is None and token["last_used_at"] is None

    assert _get(world, "/bills", token=secret).status_code == 200
    assert _get(world, "/vendors", token=secret).status_code == 200
    _error(_get(world, "/payments", token=secret), 403, "insufficient_scope")

    one = _get(world, f"/tokens/{token['id']}")
    assert one.status_code == 200
    assert "secret" not in one.json() and secret not in one.text
    assert one.json()["last_used_at"] is not None  # it was used above
    listed = _get(world, "/tokens", limit=100)
    assert secret not in listed.text and "hash" not in listed.text

    audit = _get(world, "/audit", action="token.created", object_id=token["id"]).json()["data"]
    assert len(audit) == 1 and audit[0]["actor"] == _id_of(world, "admin")
    assert audit[0]["detail"]["scopes"] == ["bills:read", "vendors:read"]
    assert secret not in str(audit) and secret[len(TOKEN_PREFIX) :] not in str(audit)


def test_scopes_cannot_exceed_the_callers(world: dict[str, Any]) -> None:
    minter = _post(world, {"scopes": ["tokens:write", "bills:read", "payments:read"]}).json()["secret"]
    ok = _post(world, {"scopes": ["bills:read", "payments:read"]}, token=minter)
    assert ok.status_code == 201 and ok.json()["scopes"] == ["bills:read", "payments:read"]
    _error(
        _post(world, {"scopes": ["bills:read", "bills:write"]}, token=minter),
        403,
        "insufficient_scope",
        "scopes",
    )
    _error(_post(world, {"scopes": ["*"]}, token=minter), 403, "insufficient_scope", "scopes")
    _error(_post(world, {"scopes": ["audit:read"]}, token=minter), 403, "insufficient_scope", "scopes")
    # `*` grants anything, `*` included
    assert _post(world, {"scopes": ["*"]}).json()["scopes"] == ["*"]


def test_company_limited_caller_creates_only_within_its_companies(world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    inherited = _post(world, {"scopes": ["bills:read"]}, token="company_a")
    assert inherited.status_code == 201 and inherited.json()["companies"] == [a["company"]]
    bills = _get(world, "/bills", token=inherited.json()["secret"], limit=100).json()["data"]
    assert bills and {bill["company_id"] for bill in bills} == {a["company"]}

    explicit = _post(world, {"scopes": ["bills:read"], "companies": [a["company"]]}, token="company_a")
    assert explicit.status_code == 201
    for companies in ([b["company"]], [a["company"], b["company"]], ["comp_does_not_exist"]):
        response = _post(world, {"scopes": ["bills:read"], "companies": companies}, token="company_a")
        _error(response, 403, "exceeds_token_limits", "companies")


def test_connection_limited_caller_creates_only_within_its_connection(world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    inherited = _post(world, {"scopes": ["bills:read"]}, token="connection_b")
    assert inherited.status_code == 201 and inherited.json()["connection_id"] == b["connection"]
    narrower = _post(world, {"scopes": ["bills:read"], "companies": [b["company"]]}, token="connection_b")
    assert narrower.status_code == 201
    assert narrower.json()["companies"] == [b["company"]]
    assert narrower.json()["connection_id"] == b["connection"]
    other = _post(world, {"scopes": ["bills:read"], "connection_id": a["connection"]}, token="connection_b")
    _error(other, 403, "exceeds_token_limits", "connection_id")
    # Another tenant's company and one that does not exist answer alike.
    foreign = _post(world, {"scopes": ["bills:read"], "companies": [a["company"]]}, token="connection_b")
    missing = _post(world, {"scopes": ["bills:read"], "companies": ["comp_nope"]}, token="connection_b")
    _error(foreign, 400, "invalid_request", "companies")
    _error(missing, 400, "invalid_request", "companies")
    assert foreign.json()["error"]["message"].replace(a["company"], "X") == missing.json()["error"][
        "message"
    ].replace("comp_nope", "X")


def test_expiry(world: dict[str, Any]) -> None:
    before = datetime.now().astimezone()
    hour = _post(world, {"scopes": ["tokens:write", "bills:read"], "expires_in_seconds": 3600})
    assert hour.status_code == 201
    expires_at = datetime.fromisoformat(hour.json()["expires_at"])
    assert before + timedelta(seconds=3590) < expires_at < before + timedelta(seconds=3700)
    minter = hour.json()["secret"]
    # a token expires no later than the one that made it
    child = _post(world, {"scopes": ["bills:read"]}, token=minter)
    assert child.status_code == 201 and datetime.fromisoformat(child.json()["expires_at"]) == expires_at
    assert _post(world, {"scopes": ["bills:read"], "expires_in_seconds": 60}, token=minter).status_code == 201
    longer = _post(world, {"scopes": ["bills:read"], "expires_in_seconds": 7200}, token=minter)
    _error(longer, 403, "exceeds_token_limits", "expires_in_seconds")
    for bad in (0, -5, 10, 10**12, "soon", 1.5):
        _error(_post(world, {"scopes": ["bills:read"], "expires_in_seconds": bad}), 400, "invalid_request",
               "expires_in_seconds")  # fmt: skip


@pytest.mark.parametrize(
    "body,param",
    [
        ({"scopes": ["bills:read", "bills:delete"]}, "scopes"),
        ({"scopes": ["nonsense"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"scopes": [" "]}, "scopes"),
        ({"scopes": "bills:read"}, "scopes"),
        ({}, "scopes"),
        ({"scopes": ["bills:read"], "name": "x" * 201}, "name"),
        ({"scopes": ["bills:read"], "companies": []}, "companies"),
        ({"scopes": ["bills:read"], "companies": ["comp_unknown"]}, "companies"),
        ({"scopes": ["bills:read"], "connection_id": "conn_unknown"}, "connection_id"),
        ({"scopes": ["bills:read"], "secret": "papi_mine"}, "secret"),
        ({"scopes": ["bills:read"], "expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
    ],
)
def test_bad_input_is_400_with_the_envelope(world: dict[str, Any], body: dict[str, Any], param: str) -> None:
    _error(_post(world, body), 400, "invalid_request", param)


def test_unknown_scope_is_named(world: dict[str, Any]) -> None:
    response = _post(world, {"scopes": ["bills:read", "bills:delete"]})
    assert "bills:delete" in response.json()["error"]["message"]


def test_authentication_and_scope(world: dict[str, Any]) -> None:
    client = world["client"]
    _error(client.post("/tokens", json={"scopes": ["bills:read"]}), 401, "missing_token")
    _error(client.get("/tokens"), 401, "missing_token")
    _error(client.delete("/tokens/tok_x"), 401, "missing_token")
    _error(_get(world, "/tokens", token="papi_not-a-real-token"), 401, "invalid_token")
    admin_id = _id_of(world, "admin")
    _error(_post(world, {"scopes": ["bills:read"]}, token="bills_only"), 403, "insufficient_scope")
    _error(_get(world, "/tokens", token="bills_only"), 403, "insufficient_scope")
    _error(_get(world, f"/tokens/{admin_id}", token="bills_only"), 403, "insufficient_scope")
    _error(_delete(world, admin_id, token="bills_only"), 403, "insufficient_scope")
    assert _get(world, "/tokens").status_code == 200  # the admin token is untouched


def test_list_and_get_never_show_secrets_and_respect_limits(world: dict[str, Any]) -> None:
    ids = {name: _id_of(world, name) for name in world["tokens"]}
    listed = _get(world, "/tokens", limit=100)
    assert listed.status_code == 200
    body = listed.json()
    assert body["object"] == "list" and body["has_more"] is False and body["next_cursor"] is None
    assert set(ids.values()) <= {t["id"] for t in body["data"]}
    for item in body["data"]:
        assert not {"secret", "token_hash", "hash"} & set(item)
    for secret in world["tokens"].values():
        assert secret not in listed.text and secret[len(TOKEN_PREFIX) :] not in listed.text

    # A limited caller sees itself and the tokens within its limits, no others (404, not 403).
    child = _post(world, {"scopes": ["bills:read"]}, token="company_a").json()
    for name, theirs in (
        ("company_a", [ids["company_a"], child["id"]]),
        ("connection_b", [ids["connection_b"]]),
    ):
        seen = [t["id"] for t in _get(world, "/tokens", token=name).json()["data"]]
        assert seen == sorted(theirs), name
        assert _get(world, f"/tokens/{ids['admin']}", token=name).status_code == 404
    _error(_get(world, f"/tokens/{ids['connection_b']}", token="company_a"), 404, "not_found", "id")
    one = _get(world, f"/tokens/{child['id']}", token="company_a")
    assert one.status_code == 200 and one.json()["companies"] == [world["a"]["company"]]
    assert child["secret"] not in one.text
    _error(_get(world, "/tokens/tok_missing"), 404, "not_found", "id")


def test_list_pages_with_cursor(world: dict[str, Any]) -> None:
    for n in range(5):
        _post(world, {"scopes": ["bills:read"], "name": f"t{n}"})
    everything = [t["id"] for t in _get(world, "/tokens", limit=100).json()["data"]]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = _get(world, "/tokens", **params).json()
        seen += [t["id"] for t in body["data"]]
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert seen == everything == sorted(everything) and len(seen) >= 9
    _error(_get(world, "/tokens", cursor="not-a-cursor"), 400, "invalid_cursor")
    _error(_get(world, "/tokens", limit=0), 400, "invalid_request", "limit")


def test_revoke(world: dict[str, Any]) -> None:
    created = _post(world, {"scopes": ["bills:read"]}).json()
    assert _get(world, "/bills", token=created["secret"]).status_code == 200
    assert _delete(world, created["id"]).status_code == 204
    _error(_get(world, "/bills", token=created["secret"]), 401, "invalid_token")
    revoked_at = _get(world, f"/tokens/{created['id']}").json()["revoked_at"]
    assert revoked_at is not None
    again = _delete(world, created["id"])  # idempotent: still revoked, the first time kept
    assert again.status_code == 204 and again.content == b""
    assert _get(world, f"/tokens/{created['id']}").json()["revoked_at"] == revoked_at
    audit = _get(world, "/audit", action="token.revoked", object_id=created["id"]).json()["data"]
    assert len(audit) == 1 and audit[0]["actor"] == _id_of(world, "admin")
    assert created["secret"] not in str(audit)
    _error(_delete(world, "tok_missing"), 404, "not_found", "id")


def test_revoke_respects_limits_and_a_token_may_revoke_itself(world: dict[str, Any]) -> None:
    admin_id, b_id = _id_of(world, "admin"), _id_of(world, "connection_b")
    _error(_delete(world, admin_id, token="company_a"), 404, "not_found", "id")
    _error(_delete(world, b_id, token="company_a"), 404, "not_found", "id")
    assert _get(world, "/bills", token="connection_b").status_code == 200
    child = _post(world, {"scopes": ["bills:read"]}, token="company_a").json()
    assert _delete(world, child["id"], token="company_a").status_code == 204
    _error(_get(world, "/bills", token=child["secret"]), 401, "invalid_token")

    self_id = _id_of(world, "company_a")
    assert _delete(world, self_id, token="company_a").status_code == 204
    _error(_get(world, "/tokens", token="company_a"), 401, "invalid_token")
    assert _get(world, f"/tokens/{self_id}").json()["revoked_at"] is not None
