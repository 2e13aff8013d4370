"""POST /authenticate for a login the gateway already holds: a wrong password is refused by the
portal (the saved session does not vouch for it) and leaves the stored credentials working."""

from __future__ import annotations

from fastapi.testclient import TestClient

from plooto_api.jobs import JobContext
from plooto_api.services.connections import load_credentials
from plooto_api.store.models import Connection
from plooto_api.sync.engine import SyncEngine
from security.conftest import CONTROLLER, PASSWORD, TOTP_SECRET, bearer


async def test_a_known_username_with_a_wrong_password_gets_nothing(
    portal_client: TestClient, ctx: JobContext
) -> None:
    good = {"username": CONTROLLER, "password": PASSWORD, "totp_secret": TOTP_SECRET}
    first = portal_client.post("/authenticate", json=good)
    assert first.status_code == 201, first.text
    connection_id = first.json()["connection"]["id"]

    for wrong in ({"username": CONTROLLER, "password": "guess"},
                  {"username": CONTROLLER, "password": "guess", "totp_secret": TOTP_SECRET}):  # fmt: skip
        refused = portal_client.post("/authenticate", json=wrong)
        assert refused.status_code == 401, refused.text
        assert "session_token" not in refused.text
    with ctx.sessions() as session:  # the stored login was not replaced by the guesses
        row = session.get(Connection, connection_id)
        assert row is not None
        assert load_credentials(session, ctx.vault, row).password == PASSWORD
    assert (await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")).ok

    again = portal_client.post("/authenticate", json={"username": CONTROLLER, "password": PASSWORD})
    assert again.status_code == 201, again.text
    token = again.json()["session_token"]
    assert portal_client.get(f"/connections/{connection_id}", headers=bearer(token)).status_code == 200
