"""Fixtures for sync tests: a worker context on this test's database, and connections to the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key

CONTROLLER = "controller@northwind-cpa.test"
CLERK = "clerk@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, sandbox: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, upstream_url=sandbox,
        vault_key=SecretStr(generate_key()),
    )  # fmt: skip


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[JobContext]:
    context = JobContext.from_settings(settings, migrate=False)
    yield context
    await context.aclose()


@pytest.fixture
def make_connection(ctx: JobContext, sandbox: str) -> Callable[..., str]:
    def make(
        username: str = CONTROLLER, password: str = PASSWORD, totp_secret: str | None = TOTP_SECRET
    ) -> str:
        with transaction(ctx.sessions) as session:
            return create_connection(
                session, ctx.vault, username=username, password=password, upstream_url=sandbox,
                totp_secret=totp_secret,
            ).id  # fmt: skip

    return make


@pytest.fixture
def control(sandbox: str) -> httpx.Client:
    """The sandbox's control API (clock, faults, mutations, outbox)."""
    return httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30)


def connection_row(ctx: JobContext, connection_id: str) -> models.Connection:
    """The connection as stored now."""
    with ctx.sessions() as session:
        row = session.get(models.Connection, connection_id)
        assert row is not None
        return row


def connection_events(ctx: JobContext, connection_id: str) -> list[str]:
    """The connection's own events (`connection.*`), in order."""
    with ctx.sessions() as session:
        return list(
            session.scalars(
                select(models.Event.type)
                .where(models.Event.connection_id == connection_id, models.Event.type.like("connection.%"))
                .order_by(models.Event.seq)
            )
        )
