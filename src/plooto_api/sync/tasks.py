"""Sync job functions (run by whichever job engine is configured)."""

from __future__ import annotations

from typing import Any

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.registry import job
from plooto_api.metrics import SYNC_OBJECTS, SYNC_RUNS
from plooto_api.services.connections import ConnectionNotFound, record_login_failure_of
from plooto_api.sync.engine import SyncEngine
from plooto_api.upstream import AuthenticationError, LoginBlocked


@job("sync.connection")
async def sync_connection(ctx: JobContext, connection_id: str, cadence: str = "all") -> dict[str, Any]:
    """Pull changes for one connection; returns a summary of what changed."""
    try:
        report = await SyncEngine(ctx).sync_connection(connection_id, cadence=cadence)  # type: ignore[arg-type]
    except Exception:
        SYNC_RUNS.labels(cadence, "error").inc()  # the job engine logs it
        raise
    SYNC_RUNS.labels(cadence, "ok" if report.ok else "error").inc()
    for object_type, changed in report.counts.by_type.items():
        SYNC_OBJECTS.labels(object_type, "written").inc(changed)
    return {
        "connection_id": report.connection_id,
        "state": report.state,
        "created": report.counts.created,
        "updated": report.counts.updated,
        "unchanged": report.counts.unchanged,
        "pages": report.pages,
        "drift": report.drift,
        "error": report.error,
    }


@job("session.keep_alive")
async def keep_alive(ctx: JobContext, connection_id: str) -> None:
    """Touch the portal session before its idle timeout, so it never has to log in again."""
    try:
        portal = await ctx.portals.get(connection_id)
    except ConnectionNotFound:
        return  # removed since it was scheduled; the gateway drops its schedules
    try:
        await portal.keep_alive()
    except LoginBlocked:
        return  # the session is gone and the login waits for a person: nothing to keep alive
    except AuthenticationError as exc:  # the session was lost and signing in again was refused
        record_login_failure_of(ctx.sessions, connection_id, exc)
        raise
