"""The periodic jobs every connection gets: near-real-time sync of open items, slower sync of
reference data, and a keep-alive that refreshes the portal session before its idle timeout.

The schedules follow the store: a connection added or removed elsewhere (`plooto-api connect` or
`connections remove` beside a running gateway, another API process) gets its schedules, or loses
them, within `connection_scan_interval_seconds`."""

from __future__ import annotations

from sqlalchemy import select

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.inprocess import InProcessEngine
from plooto_api.log import get_logger
from plooto_api.store.models import Connection

log = get_logger(__name__)

_CONNECTION_SCHEDULES = ("sync-fast", "sync-slow", "keep-alive")


def connection_key(connection_id: str) -> str:
    """The concurrency key of a connection's jobs: one portal login does one thing at a time."""
    return f"connection:{connection_id}"


def schedule_connection(engine: InProcessEngine, ctx: JobContext, connection_id: str) -> None:
    """Start (or restart) a connection's periodic jobs. Syncs of one login never overlap."""
    settings = ctx.settings
    key = connection_key(connection_id)
    args = {"connection_id": connection_id}
    engine.every(f"{connection_id}:sync-fast", "sync.connection", {**args, "cadence": "fast"},
                 settings.sync_fast_interval_seconds, key=key)  # fmt: skip
    engine.every(f"{connection_id}:sync-slow", "sync.connection", {**args, "cadence": "slow"},
                 settings.sync_slow_interval_seconds, key=key, run_now=False)  # fmt: skip
    engine.every(f"{connection_id}:keep-alive", "session.keep_alive", args,
                 settings.keep_alive_interval_seconds, run_now=False)  # fmt: skip


def schedule_gateway(engine: InProcessEngine, ctx: JobContext) -> None:
    """The jobs every gateway runs once, whatever its connections: webhook delivery, event purge, and
    the retry of writes a portal outage left open."""
    engine.every("webhooks:deliver", "webhooks.deliver", None, ctx.settings.webhook_delivery_interval_seconds,
                 key="webhooks:deliver")  # fmt: skip
    # No key: a run carrying a slow write must not hold back the next; one operation is never taken
    # twice (a run claims what it takes).
    engine.every("writes:retry", "writes.retry", None, ctx.settings.write_retry_seconds, run_now=False)
    engine.every("events:purge", "events.purge", None, 3600.0, key="events:purge", run_now=False)


async def unschedule_connection(engine: InProcessEngine, connection_id: str) -> None:
    """Stop a connection's periodic jobs and cancel its runs in progress (they stop at their next
    step; a sync resumes from its cursor if the connection is still there)."""
    _cancel_schedules(engine, connection_id)
    await engine.cancel_runs(connection_key(connection_id))


def _cancel_schedules(engine: InProcessEngine, connection_id: str) -> None:
    for name in _CONNECTION_SCHEDULES:
        engine.cancel(f"{connection_id}:{name}")


def scheduled_connections(engine: InProcessEngine) -> set[str]:
    """The connections whose periodic jobs this engine runs."""
    suffixes = tuple(f":{name}" for name in _CONNECTION_SCHEDULES)
    return {
        schedule_id.rsplit(":", 1)[0] for schedule_id in engine.schedules if schedule_id.endswith(suffixes)
    }


def follow_store(engine: InProcessEngine, ctx: JobContext) -> tuple[set[str], set[str]]:
    """Schedule the connections the store has and this engine does not; stop the schedules of
    those it no longer has (their running syncs notice by themselves). Returns (added, dropped)."""
    with ctx.sessions() as session:
        stored = set(session.scalars(select(Connection.id)))
    scheduled = scheduled_connections(engine)
    for connection_id in sorted(stored - scheduled):
        schedule_connection(engine, ctx, connection_id)
    for connection_id in sorted(scheduled - stored):
        _cancel_schedules(engine, connection_id)
    return stored - scheduled, scheduled - stored


def schedule_all(engine: InProcessEngine, ctx: JobContext) -> int:
    """Schedule the gateway's own jobs and every connection in the store, and keep following the
    store; returns how many connections."""
    schedule_gateway(engine, ctx)
    added, _ = follow_store(engine, ctx)
    engine.watch("connections:follow", lambda: _log_followed(follow_store(engine, ctx)),
                 ctx.settings.connection_scan_interval_seconds)  # fmt: skip
    return len(added)


def _log_followed(changes: tuple[set[str], set[str]]) -> None:
    added, dropped = changes
    if added or dropped:
        log.info("connections_followed", scheduled=sorted(added), unscheduled=sorted(dropped))
