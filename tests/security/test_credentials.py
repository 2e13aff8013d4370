"""Credential rotation: a password refused by the portal is replaced by PATCH /connections/{id} or
`plooto-api connections set-password`, and the connection recovers; nothing secret is echoed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.store.models import AuditEntry, Company, Connection
from plooto_api.sync.engine import SyncEngine
from security.conftest import CONTROLLER, PASSWORD, TOTP_SECRET, add_connection, bearer

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


def _state(ctx: JobContext, connection_id: str) -> tuple[str, str | None]:
    with ctx.sessions() as session:
        row = session.get(Connection, connection_id)
        assert row is not None
        return row.state, row.state_reason


async def _needs_password(ctx: JobContext) -> str:
    connection_id = add_connection(ctx, password="old-" + PASSWORD)  # as if changed in the portal
    report = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert report.state == "requires_action"
    assert _state(ctx, connection_id) == ("requires_action", "password")
    again = await SyncEngine(ctx).sync_connection(
        connection_id, cadence="fast"
    )  # no new login with the refused one
    assert again.state == "requires_action" and "password" in (again.error or "")
    return connection_id


async def test_patch_replaces_a_refused_password_and_the_connection_recovers(
    ctx: JobContext, portal_client: TestClient, make_token: Callable[..., str]
) -> None:
    connection_id = await _needs_password(ctx)
    token = make_token(["connections:read", "connections:write"])
    response = portal_client.patch(f"/connections/{connection_id}", headers=bearer(token),
                                   json={"password": PASSWORD, "label": "Northwind"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "Northwind"
    assert PASSWORD not in response.text
    assert _state(ctx, connection_id) == ("healthy", None)
    report = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert report.ok and report.state == "healthy" and report.counts.created > 0
    with ctx.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.object_id == connection_id)).one()
    assert (entry.action, entry.detail) == ("connection.updated", {"changed": ["password", "label"]})
    assert PASSWORD not in str(entry.detail)


async def test_signing_in_again_with_the_new_password_repairs_a_connection_waiting_for_it(
    ctx: JobContext, portal_client: TestClient
) -> None:
    # POST /authenticate (or `plooto-api connect`) with the password the portal takes now: the
    # connection it finds is given it and syncs again, rather than waiting on for a new password.
    connection_id = await _needs_password(ctx)
    response = portal_client.post("/authenticate", json={"username": CONTROLLER, "password": PASSWORD,
                                                         "totp_secret": TOTP_SECRET})  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["connection"]["id"] == connection_id
    assert response.json()["connection"]["state"] == "healthy"
    assert _state(ctx, connection_id) == ("healthy", None)
    report = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert report.ok, report.error


async def test_patch_replaces_the_totp_secret(ctx: JobContext, portal_client: TestClient,
                                              make_token: Callable[..., str]) -> None:  # fmt: skip
    connection_id = add_connection(ctx, totp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")  # the wrong one
    first = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
    assert first.state == "requires_action"
    token = make_token(["connections:write"])
    spaced = " ".join(TOTP_SECRET[i : i + 4] for i in range(0, len(TOTP_SECRET), 4)).lower()
    response = portal_client.patch(f"/connections/{connection_id}", headers=bearer(token),
                                   json={"totp_secret": spaced})  # fmt: skip
    assert response.status_code == 200, response.text
    assert TOTP_SECRET not in response.text
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok


async def test_patch_is_scoped_and_validated(
    ctx: JobContext, portal_client: TestClient, make_token: Callable[..., str]
) -> None:
    connection_id = add_connection(ctx)
    other = add_connection(ctx, username="cfo@maple-leaf-bakery-ltd.test")
    path = f"/connections/{connection_id}"
    read_only = make_token(["connections:read"])
    assert portal_client.patch(path, headers=bearer(read_only), json={"label": "x"}).status_code == 403
    limited = make_token(["connections:write"], connection_id=other)
    assert portal_client.patch(path, headers=bearer(limited), json={"label": "x"}).status_code == 404
    writer = bearer(make_token(["connections:write"]))
    assert portal_client.patch(path, headers=writer, json={}).status_code == 400
    assert portal_client.patch(path, headers=writer, json={"totp_secret": "not base32!"}).status_code == 400
    assert portal_client.patch(path, headers=writer, json={"password": ""}).status_code == 400
    unknown = portal_client.patch(path, headers=writer, json={"password": "p", "username": "x"})
    assert unknown.status_code == 400
    assert (
        portal_client.patch("/connections/conn_nope", headers=writer, json={"label": "x"}).status_code == 404
    )
    assert portal_client.patch(path, headers={}, json={"label": "x"}).status_code == 401


async def test_cli_set_password_reads_the_environment_and_recovers_the_connection(
    ctx: JobContext, portal_settings: Settings
) -> None:
    connection_id = await _needs_password(ctx)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOOTO_API_", "PLOOTO_PASSWORD"))}
    env.update(PLOOTO_API_DATABASE_URL=str(portal_settings.database_url), PLOOTO_PASSWORD=PASSWORD,
               PLOOTO_API_VAULT_KEY=portal_settings.vault_key.get_secret_value())  # type: ignore[union-attr]  # fmt: skip
    result = subprocess.run([*CLI, "connections", "set-password", connection_id], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "credentials replaced (password)" in result.stdout and PASSWORD not in result.stdout + result.stderr
    )
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok
    missing = subprocess.run([*CLI, "connections", "set-password", "conn_nope"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no connection conn_nope" in missing.stderr


async def test_a_token_limited_to_some_of_a_connections_companies_cannot_change_the_connection(
    ctx: JobContext, portal_client: TestClient, make_token: Callable[..., str]
) -> None:
    # The connection is the login of every company it holds: renaming it, replacing its password,
    # answering its MFA, clearing its drift or removing it (with all its companies' data) acts on
    # companies such a token cannot even see.
    connection_id = add_connection(ctx)
    assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        companies = list(session.scalars(select(Company.id).where(Company.connection_id == connection_id)))
    assert len(companies) >= 2
    scopes = ["connections:read", "connections:write"]
    some = bearer(make_token(scopes, company_ids=companies[:1]))
    assert portal_client.get(f"/connections/{connection_id}", headers=some).status_code == 200
    attempts = [
        ("PATCH", f"/connections/{connection_id}", {"label": "mine now"}),
        ("PATCH", f"/connections/{connection_id}", {"password": "wrong-password"}),
        ("POST", f"/connections/{connection_id}/mfa", {"code": "123456"}),
        ("POST", f"/connections/{connection_id}/clear_drift", None),
        ("DELETE", f"/connections/{connection_id}", None),
    ]
    for method, path, body in attempts:
        response = portal_client.request(method, path, headers=some, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "exceeds_token_limits"
    assert _state(ctx, connection_id) == ("healthy", None)
    every = bearer(make_token(scopes, company_ids=companies))
    renamed = portal_client.patch(f"/connections/{connection_id}", headers=every, json={"label": "Northwind"})
    assert renamed.status_code == 200, renamed.text
    assert portal_client.delete(f"/connections/{connection_id}", headers=every).status_code == 200
