"""`POST /connections/{id}/mfa/resend` (and `plooto-api connections resend-code`), against the real
sandbox: the portal sends a new SMS code to a connection waiting for one, which answers it; nothing
is sent for a connection waiting for no code, or whose codes come from an authenticator app."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import select

from plooto_api.cli import CliError
from plooto_api.cli.connections import run_resend_code
from plooto_api.config import Settings
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from support.connections import connect_and_sync, stored_connection

CONTROLLER, CLERK, PASSWORD = "controller@northwind-cpa.test", "clerk@northwind-cpa.test", "sandbox-password"


@pytest.fixture
def client(portal_client: TestClient) -> TestClient:
    return portal_client


def _admin(client: TestClient) -> dict[str, str]:
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        return {"Authorization": f"Bearer {create_token(session, scopes=['*'])[1]}"}


def _waiting(client: TestClient, username: str) -> str:
    """A connection synced once as the scheduler would, without a TOTP secret: it waits for a code."""
    connection_id = connect_and_sync(client.app.state.settings, username, totp_secret=None)  # type: ignore[attr-defined]
    assert stored_connection(client.app.state.sessions, connection_id).state == "requires_action"  # type: ignore[attr-defined]
    return connection_id


def _sms(sandbox: str) -> list[dict[str, Any]]:
    return [m for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms"]


def test_a_new_code_is_sent_and_answers_the_connection(client: TestClient, sandbox: str) -> None:
    connection_id = _waiting(client, CLERK)
    headers = _admin(client)
    first = _sms(sandbox)[-1]["code"]
    resent = client.post(f"/connections/{connection_id}/mfa/resend", headers=headers)
    assert resent.status_code == 202, resent.text
    assert (resent.json()["state"], resent.json()["state_reason"]) == ("requires_action", "mfa")
    codes = [m["code"] for m in _sms(sandbox)]
    assert codes[-2] == first and codes[-1] != first  # one new code
    done = client.post(f"/connections/{connection_id}/mfa", json={"code": codes[-1]}, headers=headers)
    assert done.status_code == 200 and done.json()["state"] == "healthy", done.text
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        actions = session.scalars(select(models.AuditEntry.action)).all()
    assert "connection.mfa_resent" in actions and first not in str(resent.text)

    # Healthy now: nothing to send.
    again = client.post(f"/connections/{connection_id}/mfa/resend", headers=headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state", again.text
    assert len(_sms(sandbox)) == len(codes)


def test_a_pending_sign_in_the_portal_dropped_is_started_again(client: TestClient, sandbox: str) -> None:
    connection_id = _waiting(client, CLERK)
    sent = len(_sms(sandbox))
    httpx.post(f"{sandbox}/__sandbox/clock", json={"advance_minutes": 20}).raise_for_status()
    resent = client.post(f"/connections/{connection_id}/mfa/resend", headers=_admin(client))
    assert resent.status_code == 202, resent.text
    assert len(_sms(sandbox)) == sent + 1
    done = client.post(f"/connections/{connection_id}/mfa", json={"code": _sms(sandbox)[-1]["code"]},
                       headers=_admin(client))  # fmt: skip
    assert done.status_code == 200 and done.json()["state"] == "healthy", done.text


def test_an_authenticator_apps_codes_are_not_sent(client: TestClient, sandbox: str) -> None:
    connection_id = _waiting(client, CONTROLLER)  # a TOTP user whose secret the gateway lacks
    sent = len(_sms(sandbox))
    refused = client.post(f"/connections/{connection_id}/mfa/resend", headers=_admin(client))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_code_to_send", refused.text
    assert len(_sms(sandbox)) == sent


def test_the_cli_sends_a_new_code_and_says_how_to_give_it(client: TestClient, sandbox: str) -> None:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    connection_id = _waiting(client, CLERK)
    sent = len(_sms(sandbox))
    out = io.StringIO()
    run_resend_code(settings, Console(file=out, width=300), connection_id)
    assert len(_sms(sandbox)) == sent + 1
    assert f"plooto-api sync --connection {connection_id} --mfa-code CODE" in out.getvalue(), out.getvalue()
    with pytest.raises(CliError, match="nothing was sent"):
        run_resend_code(settings, Console(file=io.StringIO()), _waiting(client, CONTROLLER))
