"""API tokens: hashes only at rest, a prefix for people, expiry (`tokens create --expires-in`),
revocation and last-used time; expired and revoked tokens get 401."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.cli import CliError
from plooto_api.cli.tokens import parse_lifetime, run_create, run_list, run_revoke
from plooto_api.config import Settings
from plooto_api.services.tokens import hash_token
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import ApiToken
from security.conftest import bearer


def _row(sessions: sessionmaker[Session], secret: str) -> ApiToken:
    with sessions() as session:
        return session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).one()


def test_cli_expiry_is_enforced(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    secret = run_create(settings, scopes="connections:read", companies=None, connection=None, name="ci",
                        expires_in="30d")  # fmt: skip
    row = _row(sessions, secret)
    assert row.expires_at is not None
    expires = row.expires_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)
    assert timedelta(days=29, hours=23) < expires <= timedelta(days=30)
    assert client.get("/connections", headers=bearer(secret)).status_code == 200
    out = io.StringIO()
    run_list(settings, Console(file=out, width=300))
    assert "active (expires " in out.getvalue()
    with transaction(sessions) as session:  # thirty days later
        session.execute(update(ApiToken).where(ApiToken.id == row.id)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
    response = client.get("/connections", headers=bearer(secret))
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    out = io.StringIO()
    run_list(settings, Console(file=out, width=300))
    assert f"{row.id}  {row.prefix}…  expired" in out.getvalue()


@pytest.mark.parametrize(("text", "hours"), [("90m", 1.5), ("12h", 12), ("30d", 720), ("2w", 336)])
def test_lifetimes(text: str, hours: float) -> None:
    assert parse_lifetime(text) == timedelta(hours=hours)


@pytest.mark.parametrize("text", ["30", "0d", "-1d", "1y", "d", "30 days"])
def test_bad_lifetimes_are_refused(text: str) -> None:
    with pytest.raises(CliError, match="--expires-in"):
        parse_lifetime(text)


def test_revoked_tokens_get_401(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    secret = run_create(settings, scopes="*", companies=None, connection=None, name=None)
    assert client.get("/connections", headers=bearer(secret)).status_code == 200
    run_revoke(settings, Console(file=io.StringIO()), _row(sessions, secret).id)
    assert client.get("/connections", headers=bearer(secret)).status_code == 401
    with pytest.raises(CliError, match="no token tok_nope"):
        run_revoke(settings, Console(file=io.StringIO()), "tok_nope")


def test_only_the_hash_is_stored_and_last_use_is_recorded(
    client: TestClient, make_token: Callable[..., str], sessions: sessionmaker[Session], engine: object
) -> None:
    secret = make_token(["connections:read"])
    assert _row(sessions, secret).last_used_at is None
    assert client.get("/connections", headers=bearer(secret)).status_code == 200
    row = _row(sessions, secret)
    assert row.last_used_at is not None and row.prefix == secret[:11] and row.token_hash == hash_token(secret)
    with sessions() as session:  # the secret is nowhere in the table
        dump = repr(session.execute(text("SELECT * FROM api_tokens")).all())
    assert secret[11:] not in dump and secret not in dump
    for wrong in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), row.prefix, "papi_", "Bearer"):
        assert client.get("/connections", headers=bearer(wrong)).status_code == 401
