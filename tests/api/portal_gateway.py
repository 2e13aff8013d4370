"""A gateway (TestClient) on a connection synced from the real sandbox, for read tests that need
what the portal says rather than seeded rows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine, SyncReport

CONTROLLER = "controller@northwind-cpa.test"
CLERK = "clerk@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"


@dataclass
class PortalGateway:
    """A running gateway app on one synced connection, its admin token and the sandbox's control API."""

    client: TestClient
    token: str
    settings: Settings
    connection_id: str
    control: httpx.Client = field(repr=False)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {self.token}"})

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.client.app.state.sessions  # type: ignore[attr-defined,no-any-return]

    def sync(self) -> SyncReport:
        """Sync the connection now, as a worker beside the app would."""
        return asyncio.run(_sync(self.settings, self.connection_id))

    def mutate(self, **body: Any) -> list[str]:
        """Change the portal as another portal user would; the ids it changed."""
        response = self.control.post("/mutate", json=body)
        assert response.status_code == 200, response.text
        return list(response.json()["changed"])

    def company_upstream_id(self) -> str:
        with self.sessions() as session:
            return (
                session.scalars(
                    select(models.Company.upstream_id)
                    .where(models.Company.connection_id == self.connection_id)
                    .order_by(models.Company.upstream_id)
                ).first()
                or ""
            )

    def gateway_id(self, model: Any, upstream_id: str) -> str:
        with self.sessions() as session:
            return str(session.scalars(
                select(model.id).where(model.connection_id == self.connection_id, model.upstream_id == upstream_id)
            ).one())  # fmt: skip

    def events(self, event_type: str, object_id: str) -> int:
        with self.sessions() as session:
            return len(session.scalars(
                select(models.Event.id).where(models.Event.type == event_type, models.Event.object_id == object_id)
            ).all())  # fmt: skip


async def _sync(settings: Settings, connection_id: str) -> SyncReport:
    ctx = JobContext.from_settings(settings, migrate=False)
    try:
        return await SyncEngine(ctx).sync_connection(connection_id)
    finally:
        await ctx.aclose()


async def _connect(settings: Settings, username: str, totp: str | None) -> str:
    ctx = JobContext.from_settings(settings, migrate=False)
    try:
        with transaction(ctx.sessions) as session:
            return create_connection(
                session, ctx.vault, username=username, password=PASSWORD,
                upstream_url=str(settings.upstream_url), totp_secret=totp,
            ).id  # fmt: skip
    finally:
        await ctx.aclose()


@contextmanager
def portal_gateway(
    database_url: str,
    data_dir: Path,
    sandbox: str,
    username: str = CONTROLLER,
    totp: str | None = TOTP_SECRET,
    **overrides: Any,
) -> Iterator[PortalGateway]:
    """A gateway on a connection to `sandbox`, synced once (no background jobs); `overrides` are
    settings."""
    settings = Settings(data_dir=data_dir, database_url=database_url, upstream_url=sandbox,
                        vault_key=SecretStr(generate_key()), **overrides)  # fmt: skip
    connection_id = asyncio.run(_connect(settings, username, totp))
    report = asyncio.run(_sync(settings, connection_id))
    assert report.ok, report.error
    with (
        TestClient(create_app(settings, run_jobs=False)) as client,
        httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30) as control,
    ):
        with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
            _row, secret = create_token(session, scopes=["*"], name="portal-reads")
        yield PortalGateway(client, secret, settings, connection_id, control)
