"""POST /authenticate against the real sandbox: TOTP, SMS challenge, refusals, session tokens."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.audit import verify_chain
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine, SyncReport

CONTROLLER = {"username": "controller@northwind-cpa.test", "password": "sandbox-password"}
TOTP = "PLOOTOSANDBOXTOTPSECRETKEY234567"
CLERK = {"username": "clerk@northwind-cpa.test", "password": "sandbox-password"}


@pytest.fixture
def client(portal_client: TestClient) -> TestClient:
    return portal_client


def _sms_code(sandbox: str) -> str:
    messages = httpx.get(f"{sandbox}/__sandbox/outbox").json()
    return str([m for m in messages if m["kind"] == "Sms"][-1]["code"])


def _sms_count(sandbox: str) -> int:
    return sum(1 for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms")


def test_totp_login_returns_a_connection_and_session_token(client: TestClient) -> None:
    response = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["connection"]["state"] == "healthy"
    token = body["session_token"]
    assert token.startswith("papi_")
    own = client.get("/connections", headers={"Authorization": f"Bearer {token}"}).json()["data"]
    assert [c["id"] for c in own] == [body["connection"]["id"]]
    assert TOTP not in response.text and "sandbox-password" not in response.text


def test_sms_login_is_completed_with_the_code(client: TestClient, sandbox: str) -> None:
    started = client.post("/authenticate", json=CLERK)
    assert started.status_code == 202, started.text
    challenge = started.json()
    assert challenge["status"] == "mfa_required" and challenge["methods"] == ["sms"]
    wrong = client.post(
        "/authenticate/mfa", json={"challenge_id": challenge["challenge_id"], "code": "000000"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_mfa_code"
    done = client.post("/authenticate/mfa", json={"challenge_id": challenge["challenge_id"],
                                                  "code": _sms_code(sandbox)})  # fmt: skip
    assert done.status_code == 201, done.text
    assert done.json()["connection"]["state"] == "healthy"
    again = client.post(
        "/authenticate/mfa", json={"challenge_id": challenge["challenge_id"], "code": "123456"}
    )
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_challenge"


def test_a_code_for_a_connection_removed_meanwhile_is_an_unknown_challenge(
    client: TestClient, sandbox: str
) -> None:
    challenge = client.post("/authenticate", json=CLERK).json()
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        _row, admin = create_token(session, scopes=["*"], name="admin")
        [connection_id] = session.scalars(select(models.Connection.id)).all()
    headers = {"Authorization": f"Bearer {admin}"}
    assert client.delete(f"/connections/{connection_id}", headers=headers).status_code == 200
    late = client.post("/authenticate/mfa", json={"challenge_id": challenge["challenge_id"],
                                                  "code": _sms_code(sandbox)})  # fmt: skip
    assert late.status_code == 404 and late.json()["error"]["code"] == "unknown_challenge"
    # Its other endpoints answer 404 too.
    gone = client.post(f"/connections/{connection_id}/mfa", headers=headers, json={"code": "123456"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert client.get("/connections", headers=headers).json()["data"] == []


def _sync(settings: Settings, connection_id: str | None = None) -> tuple[str, SyncReport]:
    """Sync in a context of its own, as a worker or the CLI would (a new SMS connection without an id)."""

    async def run() -> tuple[str, SyncReport]:
        ctx = JobContext.from_settings(settings, migrate=False)
        try:
            cid = connection_id
            if cid is None:
                with transaction(ctx.sessions) as session:
                    cid = create_connection(session, ctx.vault, username=CLERK["username"], password=CLERK["password"],
                                            upstream_url=str(settings.upstream_url)).id  # fmt: skip
            return cid, await SyncEngine(ctx).sync_connection(cid)
        finally:
            await ctx.aclose()

    return asyncio.run(run())


def test_a_sync_waiting_for_an_sms_code_is_answered_through_the_api(client: TestClient, sandbox: str) -> None:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    connection_id, report = _sync(settings)
    assert report.state == "requires_action"
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        _row, secret = create_token(session, scopes=["connections:read", "connections:write"])
    headers = {"Authorization": f"Bearer {secret}"}
    path = f"/connections/{connection_id}/mfa"
    waiting = client.get(f"/connections/{connection_id}", headers=headers).json()
    assert (waiting["state"], waiting["state_reason"]) == ("requires_action", "mfa")

    assert client.post(path, json={"code": "12"}, headers=headers).status_code == 400
    wrong = client.post(path, json={"code": "000000"}, headers=headers)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_mfa_code"
    code = _sms_code(sandbox)
    done = client.post(path, json={"code": code}, headers=headers)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "healthy" and done.json()["state_reason"] is None
    again = client.post(path, json={"code": code}, headers=headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert verify_chain(session) == []
        entry = session.scalars(select(models.AuditEntry).order_by(models.AuditEntry.seq.desc())).first()
        assert entry is not None and entry.action == "connection.mfa_answered"
        assert code not in str(entry.detail)
    # The next sync, in a context of its own, signs in without a new code (trusted device).
    _cid, report = _sync(settings, connection_id)
    assert report.ok and report.state == "healthy", report.error


def test_a_code_for_an_expired_sign_in_is_refused_and_says_so(client: TestClient, sandbox: str) -> None:
    connection_id, _report = _sync(client.app.state.settings)  # type: ignore[attr-defined]
    code, sent = _sms_code(sandbox), _sms_count(sandbox)
    clock = httpx.post(f"{sandbox}/__sandbox/clock", json={"advance_hours": 1})  # past the idle timeout
    clock.raise_for_status()
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        _row, secret = create_token(session, scopes=["connections:write"])
    response = client.post(f"/connections/{connection_id}/mfa", json={"code": code},
                           headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert response.status_code == 409 and response.json()["error"]["code"] == "mfa_expired"
    assert "new code" in response.json()["error"]["message"]
    assert _sms_count(sandbox) == sent + 1  # the sign-in was started again: the portal sent another code
    new_code = _sms_code(sandbox)
    response = client.post(f"/connections/{connection_id}/mfa", json={"code": new_code},
                           headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert response.status_code == 200 and response.json()["state"] == "healthy", response.text


def test_session_tokens_see_only_their_connection(client: TestClient, sandbox: str) -> None:
    controller = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP}).json()
    challenge = client.post("/authenticate", json=CLERK).json()
    clerk = client.post("/authenticate/mfa", json={"challenge_id": challenge["challenge_id"],
                                                   "code": _sms_code(sandbox)}).json()  # fmt: skip
    headers = {"Authorization": f"Bearer {clerk['session_token']}"}
    assert client.get(f"/connections/{controller['connection']['id']}", headers=headers).status_code == 404
    assert client.get(f"/connections/{clerk['connection']['id']}", headers=headers).status_code == 200


def test_wrong_password_is_401_and_leaves_nothing(client: TestClient) -> None:
    response = client.post("/authenticate", json={**CONTROLLER, "password": "not-it"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    assert "not-it" not in response.text
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        from sqlalchemy import func, select

        from plooto_api.store.models import Connection, VaultEntry

        assert session.scalar(select(func.count()).select_from(Connection)) == 0
        assert session.scalar(select(func.count()).select_from(VaultEntry)) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "x"},
        {**CONTROLLER, "mfa_code": "12ab"},
        {**CONTROLLER, "extra": True},
        {**CONTROLLER, "totp_secret": "JBSWY3DP"},  # too short to be a TOTP secret
        {**CONTROLLER, "totp_secret": "not base32!"},
        {"username": 5, "password": []},
    ],
)
def test_malformed_bodies_are_400(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/authenticate", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert client.post("/authenticate", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 400  # fmt: skip


def test_one_login_has_one_connection_however_its_name_is_typed(client: TestClient) -> None:
    first = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert first.status_code == 201, first.text
    spelled = {**CONTROLLER, "username": "  Controller@Northwind-CPA.test "}
    again = client.post("/authenticate", json={**spelled, "totp_secret": TOTP})
    assert again.status_code == 201, again.text
    assert again.json()["connection"]["id"] == first.json()["connection"]["id"]
    assert again.json()["connection"]["username"] == CONTROLLER["username"]


def test_a_wrong_guess_for_a_working_connection_leaves_it_alone(client: TestClient, sandbox: str) -> None:
    # POST /authenticate needs no token. A guess used to be stored over the working password (its
    # portal session set aside) until the portal answered: syncs and reads meanwhile used it, and
    # another process could pick it up from the vault and try it again. It is now proven first.
    first = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert first.status_code == 201, first.text
    connection_id = first.json()["connection"]["id"]
    ctx: JobContext = client.app.state.ctx  # type: ignore[attr-defined]

    def stored() -> tuple[Any, Any]:
        with ctx.sessions() as session:
            credentials = ctx.vault.open(session, connection_id, "credentials") or {}
            return credentials.get("password"), ctx.vault.open(session, connection_id, "session_state")

    password, portal_state = stored()
    fault = {"kind": "latency", "latencyMs": 1500, "method": "POST", "pathPattern": "^/login$", "count": 1}
    httpx.post(f"{sandbox}/__sandbox/faults", json=fault).raise_for_status()
    answers: list[httpx.Response] = []
    guess = threading.Thread(
        target=lambda: answers.append(
            client.post("/authenticate", json={**CONTROLLER, "password": "guess-1"})
        )
    )
    guess.start()
    seen: set[tuple[Any, bool]] = set()
    while guess.is_alive():  # watching the store while the portal weighs the guess
        now_password, now_state = stored()
        seen.add((now_password, now_state == portal_state))
        time.sleep(0.01)
    guess.join()
    assert answers[0].status_code == 401 and answers[0].json()["error"]["code"] == "invalid_credentials"
    assert seen == {(password, True)}  # the working password and session throughout
    with ctx.sessions() as session:
        events = session.scalars(
            select(models.Event.type).where(models.Event.connection_id == connection_id)
        ).all()
    assert [e for e in events if e.startswith("connection.")] == []
    with ctx.sessions() as session:
        state = session.scalars(
            select(models.Connection.state).where(models.Connection.id == connection_id)
        ).one()
    assert state == "healthy"


def _login_posts(sandbox: str) -> int:
    faults = httpx.get(f"{sandbox}/__sandbox/faults").json()
    return sum(f["hits"] for f in (faults if isinstance(faults, list) else faults.get("items", [])))


def _refused_connection(client: TestClient, login: dict[str, str]) -> str:
    ctx: JobContext = client.app.state.ctx  # type: ignore[attr-defined]
    with transaction(ctx.sessions) as session:
        return create_connection(session, ctx.vault, username=login["username"], password="an-old-password",
                                 upstream_url=str(ctx.settings.upstream_url)).id  # fmt: skip


def test_new_credentials_proven_on_their_own_session_sign_in_once(client: TestClient, sandbox: str) -> None:
    # The proof's sign-in is the connection's: no second login, and no second SMS code.
    count = {"kind": "latency", "latencyMs": 1, "method": "POST", "pathPattern": "^/login$"}
    httpx.post(f"{sandbox}/__sandbox/faults", json=count).raise_for_status()
    controller = _refused_connection(client, CONTROLLER)
    done = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert done.status_code == 201 and done.json()["connection"]["id"] == controller, done.text
    assert _login_posts(sandbox) == 1

    clerk = _refused_connection(client, CLERK)
    sms = _sms_count(sandbox)
    started = client.post("/authenticate", json=CLERK)
    assert started.status_code == 202, started.text
    assert _sms_count(sandbox) == sms + 1 and _login_posts(sandbox) == 2
    answered = client.post("/authenticate/mfa", json={"challenge_id": started.json()["challenge_id"],
                                                      "code": _sms_code(sandbox)})  # fmt: skip
    assert answered.status_code == 201 and answered.json()["connection"]["id"] == clerk, answered.text


def test_a_challenge_is_answered_by_another_process_of_the_gateway(
    database_url: str, tmp_path: Path, sandbox: str
) -> None:
    # Challenges lived in the memory of the process that issued them: after a restart, or at a
    # second API process behind one address, the code could not be given (404 unknown_challenge).
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, upstream_url=sandbox,
                        vault_key=SecretStr(generate_key()))  # fmt: skip
    with TestClient(create_app(settings, run_jobs=False)) as first:
        started = first.post("/authenticate", json=CLERK)
        assert started.status_code == 202, started.text
    challenge_id = started.json()["challenge_id"]
    with TestClient(create_app(settings, run_jobs=False)) as second:
        done = second.post(
            "/authenticate/mfa", json={"challenge_id": challenge_id, "code": _sms_code(sandbox)}
        )
        assert done.status_code == 201, done.text
        again = second.post("/authenticate/mfa", json={"challenge_id": challenge_id, "code": "123456"})
        assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_challenge"


def test_a_portal_answering_5xx_is_said_as_such(client: TestClient, sandbox: str) -> None:
    # "the portal could not be reached", though it was reached and answered 503.
    fault = {"kind": "error", "pathPattern": "^/login", "status": 503}
    httpx.post(f"{sandbox}/__sandbox/faults", json=fault).raise_for_status()
    response = client.post("/authenticate", json={**CONTROLLER, "totp_secret": TOTP})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and "answered 503" in error["message"], error


def test_a_totp_secret_for_a_login_whose_codes_come_by_sms_is_refused(client: TestClient) -> None:
    # The sign-in went on to the SMS step and kept the secret, which no code of the portal checks.
    response = client.post("/authenticate", json={**CLERK, "totp_secret": TOTP})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "totp_not_used" and error["param"] == "totp_secret" and TOTP not in response.text
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(models.Connection)).all() == []  # nothing kept of it
