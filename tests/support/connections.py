"""Connections as the tests meet them: made and synced once against the sandbox, and read back."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.sync.engine import SyncEngine

PASSWORD = "sandbox-password"


def connect_and_sync(
    settings: Settings, username: str, *, password: str = PASSWORD, totp_secret: str | None
) -> str:
    """A connection made and synced once, as the scheduler's first run would (in a worker context
    of its own, as another process): its state is the portal's answer. Its id."""

    async def make() -> str:
        ctx = JobContext.from_settings(settings, migrate=False)
        try:
            with transaction(ctx.sessions) as session:
                connection_id = create_connection(
                    session, ctx.vault, username=username, password=password,
                    upstream_url=str(settings.upstream_url), totp_secret=totp_secret,
                ).id  # fmt: skip
            await SyncEngine(ctx).sync_connection(connection_id)
            return connection_id
        finally:
            await ctx.aclose()

    return asyncio.run(make())


def stored_connection(sessions: sessionmaker[Session], connection_id: str) -> models.Connection:
    """The connection as stored now, detached."""
    with sessions() as session:
        row = session.get(models.Connection, connection_id)
        assert row is not None
        session.expunge(row)
        return row


def connection_event_types(sessions: sessionmaker[Session], connection_id: str) -> list[str]:
    """The types of the events of a connection and of what it synced, in order."""
    with sessions() as session:
        return list(
            session.scalars(
                select(models.Event.type)
                .where(models.Event.connection_id == connection_id)
                .order_by(models.Event.seq)
            )
        )
