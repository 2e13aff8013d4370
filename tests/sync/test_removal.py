"""Removing a connection: through the API and the CLI, during a sync, and beside a running gateway
that follows the store."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plooto_api.api.app import create_app
from plooto_api.cli import CliError
from plooto_api.cli.connections import run_remove
from plooto_api.config import Settings
from plooto_api.jobs import InProcessEngine, JobContext
from plooto_api.jobs.schedules import follow_store, scheduled_connections
from plooto_api.services.connections import VaultSessionStateStore, change_state, remove_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.base import MirroredMixin
from plooto_api.store.database import transaction
from plooto_api.sync.engine import SyncEngine

# Every table whose rows belong to one connection, and the column saying which.
OWNED = [
    (mapper.class_, mapper.class_.connection_id)
    for mapper in models.Base.registry.mappers
    if issubclass(mapper.class_, MirroredMixin)
] + [
    (models.SyncCursor, models.SyncCursor.connection_id),
    (models.ConnectionStateChange, models.ConnectionStateChange.connection_id),
    (models.Operation, models.Operation.connection_id),
    (models.ApiToken, models.ApiToken.connection_id),
    (models.VaultEntry, models.VaultEntry.owner_id),
]


def _left_of(session: Session, connection_id: str) -> dict[str, int]:
    """Rows still kept for a connection, by table (empty when nothing is)."""
    left = {}
    for model, column in OWNED:
        count = session.scalar(select(func.count()).select_from(model).where(column == connection_id)) or 0
        if count:
            left[model.__tablename__] = count
    if session.get(models.Connection, connection_id) is not None:
        left["connections"] = 1
    return left


async def _synced(ctx: JobContext, make_connection: Callable[..., str], **kwargs: Any) -> str:
    connection_id = make_connection(**kwargs)
    report = await SyncEngine(ctx).sync_connection(connection_id)
    assert report.ok, report.error
    return connection_id


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_jobs=False)) as test_client:
        yield test_client


def _token(client: TestClient, scopes: list[str]) -> dict[str, str]:
    with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
        _row, secret = create_token(session, scopes=scopes, name="removal-test")
    return {"Authorization": f"Bearer {secret}"}


async def test_delete_removes_the_connection_and_all_it_kept_but_not_its_history(
    ctx: JobContext, make_connection: Callable[..., str], client: TestClient
) -> None:
    connection_id = await _synced(ctx, make_connection)
    # A second login (no MFA, one company) whose data must be untouched.
    other_id = await _synced(
        ctx, make_connection, username="cfo@maple-leaf-bakery-ltd.test", totp_secret=None
    )
    with ctx.sessions() as session:
        kept_before = _left_of(session, other_id)
        assert _left_of(session, connection_id)["bills"] > 0
    admin = _token(client, ["*"])

    reader = _token(client, ["connections:read", "bills:read"])
    refused = client.delete(f"/connections/{connection_id}", headers=reader)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"

    response = client.delete(f"/connections/{connection_id}", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == connection_id and body["deleted"] is True
    assert body["companies"] == 2 and body["objects"] > 60

    with ctx.sessions() as session:
        assert _left_of(session, connection_id) == {}
        assert _left_of(session, other_id) == kept_before  # the other login keeps everything
        removed = session.scalars(select(models.Event).where(models.Event.type == "connection.removed")).one()
        assert removed.object_id == connection_id and removed.data["id"] == connection_id
        audit = session.scalars(
            select(models.AuditEntry).where(models.AuditEntry.action == "connection.removed")
        ).one()
        assert audit.connection_id == connection_id and audit.detail["objects"] == body["objects"]
        # Its earlier events are history and stay.
        assert (
            session.scalar(
                select(func.count())
                .select_from(models.Event)
                .where(models.Event.connection_id == connection_id)
            )
            > body["objects"] // 2
        )
    assert client.get(f"/connections/{connection_id}", headers=admin).status_code == 404
    with ctx.sessions() as session:
        others_companies = set(
            session.scalars(select(models.Company.id).where(models.Company.connection_id == other_id))
        )
    bills = client.get("/bills", headers=admin, params={"limit": 100}).json()["data"]
    assert bills and {bill["company_id"] for bill in bills} <= others_companies
    again = client.delete(f"/connections/{connection_id}", headers=admin)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


async def test_a_connection_removed_mid_sync_ends_the_sync_quietly_and_leaves_nothing(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    connection_id = make_connection()
    pages: list[str] = []

    def remove_after_first_page(company: str, feed: str, done: int, total: int | None) -> None:
        pages.append(feed)
        if len(pages) == 1:
            with transaction(ctx.sessions) as session:
                row = session.get(models.Connection, connection_id)
                assert row is not None
                remove_connection(session, ctx.vault, row, actor="test")

    report = await SyncEngine(ctx).sync_connection(connection_id, progress=remove_after_first_page)
    assert (report.state, report.error) == ("removed", "the connection was removed")
    with ctx.sessions() as session:
        # Nothing written after the removal, not even the portal session the sync would save.
        assert _left_of(session, connection_id) == {}
    again = await SyncEngine(ctx).sync_connection(connection_id)
    assert again.state == "removed"
    # A portal session still open somewhere (a keep-alive in flight) saves nothing for it either.
    VaultSessionStateStore(ctx.sessions, ctx.vault, connection_id).save({"cookies": []})
    with ctx.sessions() as session:
        assert _left_of(session, connection_id) == {}


async def test_a_gateway_follows_connections_added_and_removed_elsewhere(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    engine = InProcessEngine(ctx)
    try:
        assert follow_store(engine, ctx) == (set(), set())
        # Added by `plooto-api connect` in another process. Waiting for a password, so its
        # scheduled sync does not log in.
        connection_id = make_connection()
        with transaction(ctx.sessions) as session:
            row = session.get(models.Connection, connection_id)
            assert row is not None
            change_state(session, row, "requires_action", reason="password")
        assert follow_store(engine, ctx) == ({connection_id}, set())
        assert scheduled_connections(engine) == {connection_id}
        assert follow_store(engine, ctx) == (set(), set())
        with transaction(ctx.sessions) as session:  # removed by `connections remove`
            row = session.get(models.Connection, connection_id)
            assert row is not None
            remove_connection(session, ctx.vault, row, actor="cli")
        assert follow_store(engine, ctx) == (set(), {connection_id})
        assert scheduled_connections(engine) == set() and engine.schedules == []
    finally:
        await engine.stop()


async def test_cli_remove_confirms_and_says_what_went(
    ctx: JobContext, make_connection: Callable[..., str], settings: Settings
) -> None:
    connection_id = await _synced(ctx, make_connection)
    quiet = Console(file=io.StringIO())  # no terminal

    with pytest.raises(CliError) as unconfirmed:
        await asyncio.to_thread(run_remove, settings, quiet, connection_id, yes=False)
    assert str(unconfirmed.value).startswith(f"removing {connection_id} deletes 2 companies and ")
    assert str(unconfirmed.value).endswith("add --yes to confirm without a terminal")

    answers = iter(["n", "y"])
    typing = Console(file=io.StringIO(), force_interactive=True)
    prompts: list[str] = []
    typing.input = lambda prompt="", **_: prompts.append(prompt) or next(answers)  # type: ignore[method-assign]
    with pytest.raises(CliError, match="nothing removed"):
        await asyncio.to_thread(run_remove, settings, typing, connection_id, yes=False)
    # The question shows as written: `[y/N]` is not taken for console markup.
    question = typing.render_str(prompts[0]).plain
    assert ": its credentials, 2 companies and " in question and question.endswith(" synced objects? [y/N] ")
    with ctx.sessions() as session:
        assert _left_of(session, connection_id)["bills"] > 0  # refusing removes nothing

    await asyncio.to_thread(run_remove, settings, typing, connection_id, yes=False)
    assert f"{connection_id} removed with 2 companies and " in typing.file.getvalue()  # type: ignore[attr-defined]
    with ctx.sessions() as session:
        assert _left_of(session, connection_id) == {}
    with pytest.raises(CliError, match=f"no connection {connection_id}"):
        await asyncio.to_thread(run_remove, settings, quiet, connection_id, yes=True)


async def test_a_connection_with_writes_being_sent_is_not_removed(
    ctx: JobContext, make_connection: Callable[..., str], client: TestClient, settings: Settings
) -> None:
    connection_id = make_connection()
    with transaction(ctx.sessions) as session:
        session.add(models.Operation(id="op_1", connection_id=connection_id, kind="create_payment",
                                     status="running", reference="ref-1"))  # fmt: skip
    admin = _token(client, ["*"])
    refused = client.delete(f"/connections/{connection_id}", headers=admin)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "writes_in_flight"
    assert "1 write still being sent" in refused.json()["error"]["message"]
    with pytest.raises(CliError, match="1 write still being sent"):
        await asyncio.to_thread(run_remove, settings, Console(file=io.StringIO()), connection_id, yes=True)
    with ctx.sessions() as session:
        assert _left_of(session, connection_id)["connections"] == 1
    with transaction(ctx.sessions) as session:
        operation = session.get(models.Operation, "op_1")
        assert operation is not None
        operation.status = "succeeded"
    assert client.delete(f"/connections/{connection_id}", headers=admin).status_code == 200
