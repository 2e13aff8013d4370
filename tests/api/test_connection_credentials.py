"""New credentials for a connection, against the real sandbox: tried before they are stored or
announced, and a password the portal refused is never tried again by the gateway itself, not even
once a lock found after it has ended."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import change_state, create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.sync.engine import SyncEngine
from support.connections import connection_event_types, stored_connection

CONTROLLER = {"username": "controller@northwind-cpa.test", "password": "sandbox-password"}
TOTP = "PLOOTOSANDBOXTOTPSECRETKEY234567"


@pytest.fixture
def portal_settings(portal_settings: Settings) -> Settings:
    # The gateway's own attempt limits are not under test here: room for every attempt below.
    return portal_settings.model_copy(
        update={"auth_attempts_per_client": 100, "auth_attempts_per_username": 100}
    )


@pytest.fixture
def client(portal_client: TestClient) -> TestClient:
    return portal_client


def _headers(client: TestClient) -> dict[str, str]:
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        return {"Authorization": f"Bearer {create_token(session, scopes=['*'])[1]}"}


def _refused_password(client: TestClient) -> str:
    """The controller's connection, its stored password refused by the portal (changed there)."""
    ctx: JobContext = client.app.state.ctx  # type: ignore[attr-defined]
    with transaction(ctx.sessions) as session:
        row = create_connection(session, ctx.vault, username=CONTROLLER["username"], password="the-old-one",
                                upstream_url=str(ctx.settings.upstream_url), totp_secret=TOTP)  # fmt: skip
        change_state(session, row, "requires_action", reason="password")
        return row.id


def _login_posts(sandbox: str) -> str:
    fault = {"kind": "latency", "latencyMs": 0, "method": "POST", "pathPattern": "^/login$"}
    return str(httpx.post(f"{sandbox}/__sandbox/faults", json=fault).json()["faultId"])


def _hits(sandbox: str, fault_id: str) -> int:
    return int(
        next(f for f in httpx.get(f"{sandbox}/__sandbox/faults").json() if f["faultId"] == fault_id)["hits"]
    )


def _connection(client: TestClient, connection_id: str) -> models.Connection:
    return stored_connection(client.app.state.sessions, connection_id)  # type: ignore[attr-defined]


def _events(client: TestClient, connection_id: str) -> list[str]:
    return connection_event_types(client.app.state.sessions, connection_id)  # type: ignore[attr-defined]


def test_a_new_password_is_tried_before_it_is_stored_or_announced(client: TestClient) -> None:
    connection_id = _refused_password(client)
    headers = _headers(client)
    before = _events(client, connection_id)

    # Wrong again: refused with nothing changed, and no `repaired` announced meanwhile.
    wrong = client.patch(f"/connections/{connection_id}", json={"password": "still-wrong"}, headers=headers)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_credentials", wrong.text
    assert "still-wrong" not in wrong.text
    row = _connection(client, connection_id)
    assert (row.state, row.state_reason) == ("requires_action", "password")
    assert _events(client, connection_id) == before

    right = client.patch(
        f"/connections/{connection_id}", json={"password": CONTROLLER["password"]}, headers=headers
    )
    assert right.status_code == 200 and right.json()["state"] == "healthy", right.text
    assert _events(client, connection_id)[len(before) :] == ["connection.repaired"]


def test_a_password_refused_before_a_lock_is_not_tried_when_the_lock_ends(
    client: TestClient, sandbox: str
) -> None:
    connection_id = _refused_password(client)
    # A person guessing locks the login (the portal's five failures).
    answers = [client.post("/authenticate", json={**CONTROLLER, "password": f"guess-{n}"}) for n in range(5)]
    assert [a.status_code for a in answers] == [401] * 4 + [429], [a.text for a in answers]
    assert _connection(client, connection_id).state == "locked"

    # Five minutes into the portal's 15-minute lock, the answer says how long it lasts yet.
    httpx.post(f"{sandbox}/__sandbox/clock", json={"advance_minutes": 5}).raise_for_status()
    during = client.post("/authenticate", json={**CONTROLLER, "password": "guess-5"})
    assert during.status_code == 429 and during.json()["error"]["code"] == "account_locked", during.text
    assert 540 <= int(during.headers["Retry-After"]) <= 600 and "until" in during.json()["error"]["message"]

    # Once it ends, the stored password is still the refused one: no sync tries it.
    httpx.post(f"{sandbox}/__sandbox/clock", json={"advance_minutes": 11}).raise_for_status()
    logins = _login_posts(sandbox)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]

    async def sync() -> str | None:
        ctx = JobContext.from_settings(settings, migrate=False)
        try:
            return (await SyncEngine(ctx).sync_connection(connection_id)).error
        finally:
            await ctx.aclose()

    error = asyncio.run(sync())
    assert error is not None and "new password" in error, error
    assert _hits(sandbox, logins) == 0

    # A person's right password is let through, and mends it.
    done = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert done.status_code == 201, done.text
    assert _connection(client, connection_id).state == "healthy" and _hits(sandbox, logins) == 1


def test_a_new_totp_secret_is_proven_though_the_device_is_trusted(client: TestClient) -> None:
    # The proof signed in as the connection's trusted device, so the portal asked for no code and
    # a wrong secret was stored, to be refused at the next MFA step (counting toward the lockout).
    first = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert first.status_code == 201, first.text
    connection_id = first.json()["connection"]["id"]
    wrong = client.patch(
        f"/connections/{connection_id}", json={"totp_secret": "A" * 32}, headers=_headers(client)
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_mfa_code", wrong.text
    ctx: JobContext = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessions() as session:
        assert (ctx.vault.open(session, connection_id, "credentials") or {})["totp_secret"] == TOTP
    assert _connection(client, connection_id).state == "healthy"


def test_a_totp_secret_for_a_login_whose_codes_come_by_sms_is_refused(
    client: TestClient, sandbox: str
) -> None:
    # It was stored though the portal never checked a code of it (it sent an SMS instead), and the
    # working connection was left waiting for a person.
    clerk = {"username": "clerk@northwind-cpa.test", "password": "sandbox-password"}
    started = client.post("/authenticate", json=clerk)
    assert started.status_code == 202, started.text
    code = [m for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms"][-1]["code"]
    done = client.post(
        "/authenticate/mfa", json={"challenge_id": started.json()["challenge_id"], "code": code}
    )
    assert done.status_code == 201, done.text
    connection_id = done.json()["connection"]["id"]
    texts = len(httpx.get(f"{sandbox}/__sandbox/outbox").json())
    refused = client.patch(
        f"/connections/{connection_id}", json={"totp_secret": TOTP}, headers=_headers(client)
    )
    assert refused.status_code == 422, refused.text
    # Known from the portal's session: no sign-in to find out, which had it text the user a code.
    assert len(httpx.get(f"{sandbox}/__sandbox/outbox").json()) == texts
    error = refused.json()["error"]
    assert error["code"] == "totp_not_used" and error["param"] == "totp_secret" and TOTP not in refused.text
    ctx: JobContext = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessions() as session:
        assert (ctx.vault.open(session, connection_id, "credentials") or {}).get("totp_secret") is None
    assert _connection(client, connection_id).state == "healthy"
