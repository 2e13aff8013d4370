"""The periodic jobs every connection gets: near-real-time sync of open items, slower sync of
reference data, and a keep-alive that refreshes the portal session before its idle timeout."""

from __future__ import annotations

from sqlalchemy import select

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.inprocess import InProcessEngine
from plooto_api.store.models import Connection


def schedule_connection(engine: InProcessEngine, ctx: JobContext, connection_id: str) -> None:
    """Start (or restart) a connection's periodic jobs. Syncs of one login never overlap."""
    settings = ctx.settings
    key = f"connection:{connection_id}"
    args = {"connection_id": connection_id}
    engine.every(f"{connection_id}:sync-fast", "sync.connection", {**args, "cadence": "fast"},
                 settings.sync_fast_interval_seconds, key=key)  # fmt: skip
    engine.every(f"{connection_id}:sync-slow", "sync.connection", {**args, "cadence": "slow"},
                 settings.sync_slow_interval_seconds, key=key, run_now=False)  # fmt: skip
    engine.every(f"{connection_id}:keep-alive", "session.keep_alive", args,
                 settings.keep_alive_interval_seconds, run_now=False)  # fmt: skip


def schedule_gateway(engine: InProcessEngine, ctx: JobContext) -> None:
    """The jobs every gateway runs once, whatever its connections: webhook delivery, event purge."""
    engine.every("webhooks:deliver", "webhooks.deliver", None, ctx.settings.webhook_delivery_interval_seconds,
                 key="webhooks:deliver")  # fmt: skip
    engine.every("events:purge", "events.purge", None, 3600.0, key="events:purge", run_now=False)


def schedule_all(engine: InProcessEngine, ctx: JobContext) -> int:
    """Schedule the gateway's own jobs and every connection in the store; returns how many connections."""
    schedule_gateway(engine, ctx)
    with ctx.sessions() as session:
        ids = list(session.scalars(select(Connection.id)))
    for connection_id in ids:
        schedule_connection(engine, ctx, connection_id)
    return len(ids)
