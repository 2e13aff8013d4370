"""Refreshing one object from the portal on demand (`?fresh=true`)."""

from __future__ import annotations

import asyncio
from typing import Any

from plooto_api import mapping
from plooto_api.jobs.context import JobContext
from plooto_api.services.connections import mark_upstream_changed, record_login_failure_of
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.sync.references import write_with_references
from plooto_api.sync.upsert import apply_records, company_ids, mark_gone
from plooto_api.upstream import (
    FETCHABLE_TYPES,
    AuthenticationError,
    PermissionDenied,
    RateLimited,
    SessionExpired,
    UpstreamChanged,
    UpstreamError,
    UpstreamRecord,
)


class RefreshFailed(Exception):
    """The portal could not be read: the caller asked for the portal's copy, so it gets this error
    (HTTP status, code) rather than the stored copy passed off as fresh."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def refreshable(object_type: str) -> bool:
    """Whether objects of `object_type` can be read back from the portal one at a time. Not sync
    mappings: the portal has no read of one; they come with the object they link (its
    `accountingIds`) in the sync's listings only."""
    return object_type in FETCHABLE_TYPES


def not_refreshable(object_type: str) -> RefreshFailed:
    """The 400 `?fresh=true` gets for a type the portal does not read one at a time."""
    return RefreshFailed(400, "fresh_not_supported",
                         f"{object_type} objects cannot be read from the portal one at a time (the sync "
                         "keeps them); without ?fresh=true the stored copy is served")  # fmt: skip


async def refresh_object(ctx: JobContext, row: Any) -> None:
    """Read one object back from the portal and apply it; a confirmed 404 marks it deleted.
    RefreshFailed when the portal cannot be read (or does not read objects of its type one at a
    time: 400 `fresh_not_supported`); an answer in a changed shape also marks the connection
    `upstream_changed`, as a sync would."""
    object_type = mapping.object_map_for(row).object_type
    if not refreshable(object_type):
        raise not_refreshable(object_type)
    limit = ctx.settings.fresh_read_timeout_seconds
    try:
        # A caller waits on this read: the portal's retries (five tries of up to 30 s each, for a
        # sync that no one waits on) must not hold it for minutes.
        async with asyncio.timeout(limit):
            await _refresh(ctx, row)
    except TimeoutError as exc:
        raise RefreshFailed(503, "upstream_unavailable",
                            f"the portal did not answer within {limit:g} s; without ?fresh=true the stored "
                            "copy is served") from exc  # fmt: skip
    except UpstreamChanged as exc:
        mark_upstream_changed(ctx.sessions, row.connection_id, exc.differences)
        raise RefreshFailed(
            502, "upstream_changed", f"{exc}; the connection is marked upstream_changed"
        ) from exc
    except SessionExpired as exc:
        # Signed in, and the session lost again at once: transient, as a sync counts it; nothing
        # for a person to do, so not the 409 of a login that needs attention.
        raise RefreshFailed(503, "upstream_unavailable",
                            f"the portal could not be read ({exc or type(exc).__name__}); without "
                            "?fresh=true the stored copy is served") from exc  # fmt: skip
    except AuthenticationError as exc:
        record_login_failure_of(ctx.sessions, row.connection_id, exc)  # nothing signs in again by itself
        raise RefreshFailed(409, "connection_requires_action",
                            f"the portal login needs attention ({exc or type(exc).__name__})") from exc  # fmt: skip
    except PermissionDenied as exc:
        raise RefreshFailed(502, "portal_permission_denied", f"the portal refused the read: {exc}") from exc
    except RateLimited as exc:
        raise RefreshFailed(
            503, "upstream_rate_limited", "the portal is rate limiting this login; retry later"
        ) from exc
    except UpstreamError as exc:  # unreachable, 5xx, timeouts after the read retries
        raise RefreshFailed(503, "upstream_unavailable",
                            f"the portal could not be read ({type(exc).__name__}); without ?fresh=true the "
                            "stored copy is served") from exc  # fmt: skip


async def _refresh(ctx: JobContext, row: Any) -> None:
    object_type = mapping.object_map_for(row).object_type
    connection_id = row.connection_id
    with ctx.sessions() as session:
        companies = company_ids(session, connection_id)
    company_upstream_id = next(
        (
            upstream
            for upstream, gateway in companies.items()
            if gateway == getattr(row, "company_id", row.id)
        ),
        None,
    )
    if company_upstream_id is None:
        return
    portal = await ctx.portals.get(connection_id)
    record = await portal.fetch_object(company_upstream_id, object_type, row.upstream_id)
    if record is None:
        with transaction(ctx.sessions) as session:
            stored = session.get(type(row), row.id)
            if stored is not None:
                mark_gone(session, stored, utcnow())
        return

    async def write(records: list[UpstreamRecord], absent: set[tuple[str, str]] | None) -> None:
        with transaction(ctx.sessions) as session:
            apply_records(session, connection_id, companies, records, utcnow(), absent=absent)

    records = [record]
    if object_type == "invoice":  # its reminders are a feed of their own: read them with it
        listed = await portal.list_reminders(company_upstream_id, row.upstream_id)
        records += [part for raw in listed for part in portal.reminder_records(company_upstream_id, raw)]
    # With what it refers to that the store lacks (a vendor it was moved to since the last sync).
    await write_with_references(portal, company_upstream_id, records, write)
