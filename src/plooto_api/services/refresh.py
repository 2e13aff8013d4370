"""Refreshing one object from the portal on demand (`?fresh=true`)."""

from __future__ import annotations

from typing import Any

from plooto_api import mapping
from plooto_api.jobs.context import JobContext
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.sync.references import write_with_references
from plooto_api.sync.upsert import apply_records, company_ids, mark_deleted
from plooto_api.upstream import UpstreamRecord


async def refresh_object(ctx: JobContext, row: Any) -> None:
    """Read one object back from the portal and apply it; a confirmed 404 marks it deleted."""
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
                mark_deleted(session, stored, utcnow())
        return

    async def write(records: list[UpstreamRecord], absent: set[tuple[str, str]] | None) -> None:
        with transaction(ctx.sessions) as session:
            apply_records(session, connection_id, companies, records, utcnow(), absent=absent)

    # With what it refers to that the store lacks (a vendor it was moved to since the last sync).
    await write_with_references(portal, company_upstream_id, [record], write)
