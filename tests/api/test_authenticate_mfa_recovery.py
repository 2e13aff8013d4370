"""SMS sign-ins that go wrong, against the real sandbox: the portal's pending sign-in expired, the
code expired, wrong codes locked the login. No 500s, a new code on request, and nothing signs in
again (no password sent) while the portal's lock lasts."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.sync.engine import SyncEngine
from support.connections import connection_event_types, stored_connection

CLERK = {"username": "clerk@northwind-cpa.test", "password": "sandbox-password"}


@pytest.fixture
def portal_settings(portal_settings: Settings) -> Settings:
    # The gateway's own attempt limits are not under test here: room for every attempt below.
    return portal_settings.model_copy(
        update={"auth_attempts_per_client": 100, "auth_attempts_per_username": 100}
    )


@pytest.fixture
def client(portal_client: TestClient) -> TestClient:
    return portal_client


def _sms(sandbox: str) -> list[dict[str, Any]]:
    return [m for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms"]


def _advance(sandbox: str, minutes: int) -> None:
    httpx.post(f"{sandbox}/__sandbox/clock", json={"advance_minutes": minutes}).raise_for_status()


def _count_password_posts(sandbox: str) -> str:
    """A fault that changes nothing (no latency) but counts every POST /login: each one sends the password."""
    fault = {"kind": "latency", "latencyMs": 0, "method": "POST", "pathPattern": "^/login$"}
    response = httpx.post(f"{sandbox}/__sandbox/faults", json=fault)
    response.raise_for_status()
    return str(response.json()["faultId"])


def _password_posts(sandbox: str, fault_id: str) -> int:
    faults = httpx.get(f"{sandbox}/__sandbox/faults").json()
    return int(next(f for f in faults if f["faultId"] == fault_id)["hits"])


def _connection(client: TestClient, connection_id: str) -> models.Connection:
    return stored_connection(client.app.state.sessions, connection_id)  # type: ignore[attr-defined]


def _events(client: TestClient, connection_id: str) -> list[str]:
    return connection_event_types(client.app.state.sessions, connection_id)  # type: ignore[attr-defined]


def _start(client: TestClient) -> tuple[str, str]:
    started = client.post("/authenticate", json=CLERK)
    assert started.status_code == 202, started.text
    challenge_id = started.json()["challenge_id"]
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        [connection_id] = session.scalars(select(models.Connection.id)).all()
    return challenge_id, connection_id


def test_a_code_for_an_expired_pending_sign_in_is_409_and_a_new_code_answers_the_challenge(
    client: TestClient, sandbox: str
) -> None:
    challenge_id, _connection_id = _start(client)
    old_code, sent = _sms(sandbox)[-1]["code"], len(_sms(sandbox))
    _advance(sandbox, 16)  # past the portal's 15-minute idle timeout: its pending sign-in is gone
    late = client.post("/authenticate/mfa", json={"challenge_id": challenge_id, "code": old_code})
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "mfa_expired" and "new code" in late.json()["error"]["message"]
    assert old_code not in late.text
    assert len(_sms(sandbox)) == sent + 1  # the sign-in was started again: the portal sent a new code
    done = client.post(
        "/authenticate/mfa", json={"challenge_id": challenge_id, "code": _sms(sandbox)[-1]["code"]}
    )
    assert done.status_code == 201, done.text
    assert done.json()["connection"]["state"] == "healthy"


def test_signing_in_again_while_a_code_is_awaited_has_the_portal_send_a_new_one(
    client: TestClient, sandbox: str
) -> None:
    first, connection_id = _start(client)
    code_a, sent = _sms(sandbox)[-1]["code"], len(_sms(sandbox))
    _advance(sandbox, 11)  # code A expired (10 minutes); the portal's pending sign-in is still alive
    again = client.post("/authenticate", json=CLERK)
    assert again.status_code == 202, again.text
    second = again.json()["challenge_id"]
    assert second != first
    assert len(_sms(sandbox)) == sent + 1, "a new sign-in must get a new code, not wait for the expired one"
    code_b = _sms(sandbox)[-1]["code"]
    # The first challenge was for the code the portal has replaced.
    stale = client.post("/authenticate/mfa", json={"challenge_id": first, "code": code_a})
    assert stale.status_code == 404 and stale.json()["error"]["code"] == "unknown_challenge"
    done = client.post("/authenticate/mfa", json={"challenge_id": second, "code": code_b})
    assert done.status_code == 201, done.text
    assert done.json()["connection"]["id"] == connection_id


def _wrong_code(sandbox: str) -> str:
    live = _sms(sandbox)[-1]["code"]
    return "000000" if live != "000000" else "111111"


def _assert_locked(client: TestClient, connection_id: str, sandbox: str) -> datetime:
    row = _connection(client, connection_id)
    assert row.state == "locked", (row.state, row.state_reason)
    until = datetime.fromisoformat((row.state_detail or {})["until"])
    now = datetime.fromisoformat(httpx.get(f"{sandbox}/__sandbox/clock").json()["now"].replace("Z", "+00:00"))
    assert 14 * 60 <= (until - now).total_seconds() <= 15 * 60  # the portal's 15-minute lock, by its clock
    assert "connection.locked" in _events(client, connection_id)
    return until


def test_wrong_codes_to_a_connection_lock_it_and_no_answer_signs_in_during_the_lock(
    client: TestClient, sandbox: str
) -> None:
    _challenge, connection_id = _start(client)
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {create_token(session, scopes=['connections:write'])[1]}"}
    path = f"/connections/{connection_id}/mfa"
    logins = _count_password_posts(sandbox)
    wrong = _wrong_code(sandbox)
    statuses = [client.post(path, json={"code": wrong}, headers=headers) for _ in range(5)]
    assert [r.status_code for r in statuses] == [422] * 4 + [429], [r.text for r in statuses]
    assert statuses[-1].json()["error"]["code"] == "account_locked"
    _assert_locked(client, connection_id, sandbox)

    # Answers during the lock send nothing: no password, no code.
    later = client.post(path, json={"code": wrong}, headers=headers)
    assert later.status_code == 409 and later.json()["error"]["code"] == "invalid_state", later.text
    assert _password_posts(sandbox, logins) == 0

    # Nor does a sync (the login guard holds the lock by the portal's clock).
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]

    async def sync() -> str:
        ctx = JobContext.from_settings(settings, migrate=False)
        try:
            return (await SyncEngine(ctx).sync_connection(connection_id)).state
        finally:
            await ctx.aclose()

    assert asyncio.run(sync()) == "locked"
    assert _password_posts(sandbox, logins) == 0

    # A person signing in during the lock is refused without the portal being asked.
    during = client.post("/authenticate", json=CLERK)
    assert during.status_code == 429 and during.json()["error"]["code"] == "account_locked", during.text
    assert _password_posts(sandbox, logins) == 0
    assert _connection(client, connection_id).state == "locked"

    # Once the portal's lock is over, a person's sign-in gets a new code, which answers the connection.
    _advance(sandbox, 16)
    sent = len(_sms(sandbox))
    after = client.post("/authenticate", json=CLERK)
    assert after.status_code == 202, after.text
    assert len(_sms(sandbox)) == sent + 1 and _password_posts(sandbox, logins) == 1
    done = client.post(path, json={"code": _sms(sandbox)[-1]["code"]}, headers=headers)
    assert done.status_code == 200 and done.json()["state"] == "healthy", done.text


def test_wrong_codes_to_a_challenge_lock_the_connection_and_later_answers_are_429_not_500(
    client: TestClient, sandbox: str
) -> None:
    challenge_id, connection_id = _start(client)
    logins = _count_password_posts(sandbox)
    wrong = _wrong_code(sandbox)
    answers = [
        client.post("/authenticate/mfa", json={"challenge_id": challenge_id, "code": wrong}) for _ in range(5)
    ]
    assert [r.status_code for r in answers] == [401] * 4 + [429], [r.text for r in answers]
    _assert_locked(client, connection_id, sandbox)
    for _ in range(2):
        later = client.post("/authenticate/mfa", json={"challenge_id": challenge_id, "code": wrong})
        assert later.status_code == 429 and later.json()["error"]["code"] == "account_locked", later.text
    assert _password_posts(sandbox, logins) == 0
    assert "sandbox-password" not in later.text and wrong not in later.text

    # After the lock, the challenge's sign-in is started again: a new code answers it.
    _advance(sandbox, 16)
    sent = len(_sms(sandbox))
    restarted = client.post("/authenticate/mfa", json={"challenge_id": challenge_id, "code": wrong})
    assert restarted.status_code == 409 and restarted.json()["error"]["code"] == "mfa_expired", restarted.text
    assert len(_sms(sandbox)) == sent + 1 and _password_posts(sandbox, logins) == 1
    done = client.post(
        "/authenticate/mfa", json={"challenge_id": challenge_id, "code": _sms(sandbox)[-1]["code"]}
    )
    assert done.status_code == 201 and done.json()["connection"]["state"] == "healthy", done.text


def test_a_challenge_of_a_login_signed_in_another_way_is_no_longer_answered(
    client: TestClient, sandbox: str
) -> None:
    challenge_id, connection_id = _start(client)
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {create_token(session, scopes=['connections:write'])[1]}"}
    code = _sms(sandbox)[-1]["code"]
    answered = client.post(f"/connections/{connection_id}/mfa", json={"code": code}, headers=headers)
    assert answered.status_code == 200, answered.text
    # The portal checks no code for a session already signed in: the challenge must not vouch for one.
    late = client.post("/authenticate/mfa", json={"challenge_id": challenge_id, "code": _wrong_code(sandbox)})
    assert late.status_code == 404 and late.json()["error"]["code"] == "unknown_challenge", late.text
    assert "session_token" not in late.text


def test_a_wrong_code_given_with_the_credentials_keeps_nothing(client: TestClient) -> None:
    refused = client.post("/authenticate", json={**CLERK, "mfa_code": "000000"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_mfa_code", refused.text
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(models.Connection)).all() == []
        assert session.scalars(select(models.VaultEntry)).all() == []
