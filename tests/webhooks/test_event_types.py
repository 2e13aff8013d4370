"""The list of event types subscriptions are checked against holds every type the gateway emits:
those of a real sync of the sandbox and of a connection's whole lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.schemas.gateway import ConnectionState
from plooto_api.services.connections import change_state, create_connection, remove_connection
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine
from plooto_api.webhooks.event_types import EVENT_TYPES, unknown_event_filter


@pytest.fixture
async def ctx(database_url: str, tmp_path: Path, sandbox: str) -> AsyncIterator[JobContext]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, upstream_url=sandbox,
                        vault_key=SecretStr(generate_key()))  # fmt: skip
    context = JobContext.from_settings(settings, migrate=False)
    yield context
    await context.aclose()


async def test_every_event_a_sync_and_a_connection_lifecycle_emit_is_listed(
    ctx: JobContext, sandbox: str
) -> None:
    with transaction(ctx.sessions) as session:
        connection_id = create_connection(
            session, ctx.vault, username="controller@northwind-cpa.test", password="sandbox-password",
            upstream_url=sandbox, totp_secret="PLOOTOSANDBOXTOTPSECRETKEY234567",
        ).id  # fmt: skip
    report = await SyncEngine(ctx).sync_connection(connection_id)
    assert report.ok, report.error or report.drift
    with transaction(ctx.sessions) as session:
        connection = session.get(models.Connection, connection_id)
        assert connection is not None
        for state in [*get_args(ConnectionState), "healthy", "requires_action", "healthy"]:
            # Healthy after upstream_changed only as an operator clearing the drift makes it.
            change_state(session, connection, state, clearing=state == "healthy")
        remove_connection(session, ctx.vault, connection, actor="test")
    with ctx.sessions() as session:
        emitted = set(session.scalars(select(models.Event.type).distinct()))
    assert {"bill.created", "connection.syncing", "connection.repaired", "connection.removed"} <= emitted
    assert emitted - EVENT_TYPES == set()


def test_families_and_types_that_match_nothing_are_told_apart() -> None:
    assert not unknown_event_filter("*") and not unknown_event_filter("transaction.*")
    assert not unknown_event_filter("connection.healthy")
    assert unknown_event_filter("bills.*") and unknown_event_filter("bill.nonexistent")
