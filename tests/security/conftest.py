"""Fixtures for the security tests: a gateway app on this test's database, tokens, the sandbox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.services.tokens import create_token
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.vault import generate_key

CONTROLLER = "controller@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"


@pytest.fixture
def vault_key() -> str:
    return generate_key()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, vault_key: str) -> Settings:
    """A gateway with no portal configured (enough for limits, tokens and the audit log)."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, vault_key=SecretStr(vault_key))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_jobs=False)) as test_client:
        yield test_client


@pytest.fixture
def make_token(database_url: str) -> Iterator[Callable[..., str]]:
    """Create a token directly in the store; returns its secret."""
    engine = create_db_engine(database_url)
    sessions = session_factory(engine)

    def make(scopes: list[str], **kwargs: object) -> str:
        with transaction(sessions) as session:
            return create_token(session, scopes=scopes, **kwargs)[1]  # type: ignore[arg-type]

    yield make
    engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
