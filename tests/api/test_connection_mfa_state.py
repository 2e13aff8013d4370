"""`POST /connections/{id}/mfa` sends a code only for a connection waiting for one (against the real
sandbox), and `GET /connections?state=` refuses a state that does not exist, as the other list
filters do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from support.connections import connect_and_sync

CONTROLLER = "controller@northwind-cpa.test"
PASSWORD = "sandbox-password"
WRONG_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # valid base32, not the controller's


@pytest.fixture
def client(portal_client: TestClient) -> TestClient:
    return portal_client


def _admin(client: TestClient) -> dict[str, str]:
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        return {"Authorization": f"Bearer {create_token(session, scopes=['*'])[1]}"}


def _connect(client: TestClient, *, password: str = PASSWORD, totp_secret: str | None) -> str:
    """The controller's connection, synced once as the scheduler would: its state is the portal's answer."""
    return connect_and_sync(client.app.state.settings, CONTROLLER, password=password, totp_secret=totp_secret)  # type: ignore[attr-defined]


def _counter(sandbox: str, path: str) -> Callable[[], int]:
    """A fault that changes nothing (no latency) but counts every POST to `path`."""
    fault = {"kind": "latency", "latencyMs": 0, "method": "POST", "pathPattern": f"^{path}$"}
    response = httpx.post(f"{sandbox}/__sandbox/faults", json=fault)
    response.raise_for_status()
    fault_id = response.json()["faultId"]
    return lambda: int(
        next(f for f in httpx.get(f"{sandbox}/__sandbox/faults").json() if f["faultId"] == fault_id)["hits"]
    )


def _state(client: TestClient, connection_id: str) -> tuple[str, str | None, dict[str, Any] | None]:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        row = session.get(models.Connection, connection_id)
        assert row is not None
        return row.state, row.state_reason, row.state_detail


@pytest.mark.parametrize(
    ("credentials", "reason", "why"),
    [
        ({"password": "ctrl-wrong-2", "totp_secret": None}, "password", "waiting for a new password"),
        ({"totp_secret": WRONG_TOTP_SECRET}, "mfa", "waiting for a new TOTP secret"),
    ],
    ids=["password_refused", "totp_secret_refused"],
)
def test_a_code_for_a_connection_waiting_for_new_credentials_is_409_and_sends_nothing(
    client: TestClient, sandbox: str, credentials: dict[str, Any], reason: str, why: str
) -> None:
    connection_id = _connect(client, **credentials)
    before = _state(client, connection_id)
    assert before[:2] == ("requires_action", reason)
    logins, codes = _counter(sandbox, "/login"), _counter(sandbox, "/mfa")
    answered = client.post(
        f"/connections/{connection_id}/mfa", json={"code": "123456"}, headers=_admin(client)
    )
    assert answered.status_code == 409, answered.text
    error = answered.json()["error"]
    assert error["code"] == "invalid_state" and "not waiting for an MFA code" in error["message"]
    assert why in error["message"]
    assert logins() == 0 and codes() == 0  # neither the refused password nor a code went to the portal
    assert _state(client, connection_id) == before


def test_connections_refuse_a_state_filter_that_is_no_state_as_bills_refuse_a_status(
    client: TestClient, sandbox: str
) -> None:
    connection_id = _connect(client, totp_secret=None)  # waits for a code from the authenticator app
    headers = _admin(client)
    misspelt = client.get("/connections", params={"state": "requires-action"}, headers=headers)
    bills = client.get("/bills", params={"status": "pending-approval"}, headers=headers)
    assert misspelt.status_code == bills.status_code == 400, (misspelt.text, bills.text)
    error, bills_error = misspelt.json()["error"], bills.json()["error"]
    assert error["code"] == bills_error["code"] == "invalid_request"
    assert error["param"] == "state" and bills_error["param"] == "status"
    assert error["message"].startswith("state: ") and "'requires_action'" in error["message"]
    assert error.keys() == bills_error.keys()

    listed = client.get("/connections", params={"state": "requires_action"}, headers=headers)
    assert listed.status_code == 200 and [c["id"] for c in listed.json()["data"]] == [connection_id]
    healthy = client.get("/connections", params={"state": "healthy"}, headers=headers)
    assert healthy.status_code == 200 and healthy.json()["data"] == []
