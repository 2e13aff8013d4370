"""Fixtures for the security tests: a gateway app on this test's database, tokens, the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.vault import generate_key

CONTROLLER = "controller@northwind-cpa.test"
CLERK = "clerk@northwind-cpa.test"  # MFA by SMS
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


@pytest.fixture
def portal_settings(settings: Settings, sandbox: str) -> Settings:
    """The gateway's settings with the sandbox as its portal."""
    return settings.model_copy(update={"upstream_url": sandbox})


@pytest.fixture
async def ctx(portal_settings: Settings) -> AsyncIterator[JobContext]:
    """A worker context on this test's database, keyed like the gateway."""
    context = JobContext.from_settings(portal_settings, migrate=False)
    yield context
    await context.aclose()


@pytest.fixture
def portal_client(portal_settings: Settings) -> Iterator[TestClient]:
    """The gateway app (no background jobs) with the sandbox as its portal."""
    with TestClient(create_app(portal_settings, run_jobs=False)) as test_client:
        yield test_client


def add_connection(
    ctx: JobContext,
    password: str = PASSWORD,
    totp_secret: str | None = TOTP_SECRET,
    username: str = CONTROLLER,
) -> str:
    with transaction(ctx.sessions) as session:
        return create_connection(session, ctx.vault, username=username, password=password,
                                 upstream_url=str(ctx.settings.upstream_url), totp_secret=totp_secret).id  # fmt: skip
