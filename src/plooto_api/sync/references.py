"""Completing references: the objects records refer to that the store lacks are read from the portal
and written with them, so a reference is left empty only when the portal says its object does not
exist (left empty otherwise, it would stay so until the record changed again)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from plooto_api.sync.upsert import MissingReferences
from plooto_api.upstream import FETCHABLE_TYPES, PortalSession, UpstreamRecord

T = TypeVar("T")
Ref = tuple[str, str]  # (object type, portal id)

DEPTH = 3  # rounds of reading what was read refers to (a payment's bill, then the bill's vendor)


async def write_with_references(
    portal: PortalSession,
    company_upstream_id: str,
    records: list[UpstreamRecord],
    write: Callable[[list[UpstreamRecord], set[Ref] | None], Awaitable[T]],
    *,
    wait: Callable[[set[Ref], list[UpstreamRecord]], set[Ref]] | None = None,
) -> T:
    """`write(records, absent)` applies records in one transaction (apply_records with `absent`),
    raising MissingReferences, having written nothing, when they refer to objects the store lacks.
    Those are read from the portal and put ahead of the records that refer to them (a page is
    written type by type, in order), and the write is tried again.

    `wait(missing, records)` says which of the missing references to leave empty for now (objects a
    feed later in the same sync brings); the caller sees to them."""
    absent: set[Ref] = set()
    for _ in range(DEPTH):
        try:
            return await write(records, absent)
        except MissingReferences as exc:
            waiting = wait(exc.refs, records) if wait is not None else set()
            absent |= waiting
            found: list[UpstreamRecord] = []
            for object_type, upstream_id in sorted(exc.refs - waiting):
                record = None
                if object_type in FETCHABLE_TYPES:
                    record = await portal.fetch_object(company_upstream_id, object_type, upstream_id)
                if record is None:
                    absent.add((object_type, upstream_id))
                else:
                    found.append(record)
            records = [*found, *records]
    return await write(records, None)
