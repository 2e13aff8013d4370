"""Writing one page of portal records into the store, with the events the changes cause.

A page is applied in one transaction together with the sync cursor, so a crash never leaves a
page half-written or its cursor ahead of its data. A record whose normalized form did not change
updates only when it was read (`upstream.fetched_at`), with no event; an incremental sync lists only
what changed, so it costs what changed, not what exists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.util import identity_key

from plooto_api import mapping
from plooto_api.services.events import EventBatch, record_event
from plooto_api.store.base import new_id
from plooto_api.store.bulk import IN_LIST_LIMIT, ids_by_upstream_id, insert_rows, rows_by_upstream_id
from plooto_api.store.database import json_dumps
from plooto_api.store.models import Company, Connection, SyncMapping
from plooto_api.store.types import RawJSON
from plooto_api.upstream import PAYMENT_ON_HOLD, UpstreamRecord, UpstreamRef

# A payment is sent once it reaches in_transit, or any status past it: a payment that went from
# processing to completed between two syncs (a wire never shows in_transit) was sent too.
_PAYMENT_SENT = {"in_transit", "completed", "returned"}
_PAYMENT_FAILED = {"failed", "returned"}
# A hold that ends with the payment stopped is not a release: the payment never resumes.
_PAYMENT_STOPPED = _PAYMENT_FAILED | {"cancelled"}

# Where an object of these types starts in the portal. One first seen further on (it moved on
# between two syncs, or while the gateway was stopped or waiting for a person) is given, beside its
# `<type>.created`, the events of the milestones it passed since: a subscriber to `payment.failed`
# hears of every failed payment, not only of those the gateway saw before they failed.
_ARRIVAL_BASELINE: dict[str, dict[str, Any]] = {
    "payment": {"status": "pending_approval", "status_history": [], "hold_reason": None},
    "invoice": {"status": "draft", "reminders": []},
}
# Not milestones: what the object is now, which its `<type>.created` says already.
_NOT_ON_ARRIVAL = {"payment.updated", "payment.status_updated", "invoice.updated"}


@dataclass
class ApplyCounts:
    """What applying records did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    events: int = 0
    by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: ApplyCounts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.events += other.events
        for key, value in other.by_type.items():
            self.by_type[key] += value


def _load_existing(
    session: Session, connection_id: str, object_type: str, upstream_ids: Iterable[str]
) -> dict[str, Any]:
    """The stored rows (with their child rows) that mirror `upstream_ids`, by portal id."""
    model: Any = mapping.object_map_for(object_type).model
    # Which exist, by a cheap index probe first: in an initial sync, mostly none do.
    present = list(
        ids_by_upstream_id(session, model.__table__, connection_id, list(set(upstream_ids))).values()
    )
    found: dict[str, Any] = {}
    eager = [selectinload(rel.class_attribute) for rel in model.__mapper__.relationships]
    for start in range(0, len(present), IN_LIST_LIMIT):
        for row in session.scalars(
            select(model).where(model.id.in_(present[start : start + IN_LIST_LIMIT])).options(*eager)
        ):
            found[row.upstream_id] = row
    return found


_NESTED = (UpstreamRef, dict, list, tuple)  # values worth descending into; the rest are leaves


def _collect_refs(value: Any, into: defaultdict[str, set[str]]) -> bool:
    """Add the references inside `value` to `into`; whether it holds any."""
    if isinstance(value, UpstreamRef):
        into[value.object_type].add(value.upstream_id)
        return True
    found = False
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, _NESTED) and _collect_refs(item, into):
            found = True
    return found


def references(record: UpstreamRecord) -> defaultdict[str, set[str]]:
    """The portal ids `record` refers to, by object type."""
    refs: defaultdict[str, set[str]] = defaultdict(set)
    for value in record.fields.values():
        if isinstance(value, _NESTED):
            _collect_refs(value, refs)
    return refs


def _resolve(value: Any, ids: dict[tuple[str, str], str]) -> Any:
    """`value` with each UpstreamRef replaced by its gateway id: None for a reference the store
    cannot resolve yet, and left out of a list of references (a list of ids never holds a null)."""
    if isinstance(value, UpstreamRef):
        return ids.get((value.object_type, value.upstream_id))
    if isinstance(value, dict):
        return {
            key: _resolve(item, ids) if isinstance(item, _NESTED) else item for key, item in value.items()
        }
    return [
        _resolve(item, ids) if isinstance(item, _NESTED) else item
        for item in value
        if not isinstance(item, UpstreamRef) or (item.object_type, item.upstream_id) in ids
    ]


def _gateway_ids(
    session: Session, connection_id: str, refs: defaultdict[str, set[str]], known: dict[tuple[str, str], str]
) -> dict[tuple[str, str], str]:
    ids = dict(known)
    for object_type, upstream_ids in refs.items():
        missing = [u for u in upstream_ids if (object_type, u) not in ids]
        if not missing or object_type not in mapping.OBJECT_MAPS:
            continue
        table = mapping.object_map_for(object_type).model.__table__
        for upstream_id, gateway_id in ids_by_upstream_id(session, table, connection_id, missing).items():
            ids[(object_type, upstream_id)] = gateway_id
    return ids


class MissingReferences(Exception):
    """Records refer to objects the store lacks (see `apply_records`' `absent`); nothing was written."""

    def __init__(self, refs: set[tuple[str, str]]) -> None:
        super().__init__(f"{len(refs)} referenced object(s) are not in the store")
        self.refs = refs


def _events_for_change(
    object_type: str, old_data: dict[str, Any], new_data: dict[str, Any], *, news: bool = True
) -> list[str]:
    """The events an update causes, from the object's JSON before and after. Without `news` (a
    feed's first pull) only `<type>.updated`: the rest describe what happened before."""
    types = [f"{object_type}.updated"]
    if not news:
        return types
    if object_type == "bill" and old_data["approval"] != new_data["approval"]:
        types.append("bill.approval_updated")
    if object_type == "payment":  # holds first: a payment held, then failed, reads in that order
        types += _hold_events(old_data, new_data)
    if object_type == "payment" and old_data["status"] != new_data["status"]:
        types.append("payment.status_updated")
        was_sent = old_data["status"] in _PAYMENT_SENT or any(
            change["status"] in _PAYMENT_SENT for change in old_data.get("status_history") or ()
        )  # a payment held in transit and released was sent once, not twice
        if new_data["status"] in _PAYMENT_SENT and not was_sent:
            types.append("payment.sent")
        if new_data["status"] in _PAYMENT_FAILED:
            types.append("payment.failed")
        elif new_data["status"] == "completed":
            types.append("payment.completed")
    if object_type == "invoice" and old_data["status"] != new_data["status"]:
        if new_data["status"] == "paid":
            types.append("invoice.paid")
        elif new_data["status"] == "overdue":
            types.append("invoice.overdue")
    if object_type == "invoice":
        # One event per reminder sent: several may have gone out between two syncs.
        sent_before = {r["upstream_id"] for r in old_data["reminders"] if r["status"] == "sent"}
        types += [
            "invoice.reminder_sent"
            for r in new_data["reminders"]
            if r["status"] == "sent" and r["upstream_id"] not in sent_before
        ]
    return types


def _hold_events(old_data: dict[str, Any], new_data: dict[str, Any]) -> list[str]:
    """`payment.held` for each hold that began since `old_data`, `payment.released` for each that
    ended with the payment going on. A hold keeps the status (the money is where it was), so its own
    events tell those who follow payments' statuses (a security or compliance review stops the
    payment). Read from the status history the portal keeps, which also shows a hold begun and ended
    between two reads; from whether it is held now where the history shows nothing."""
    old_history, new_history = old_data.get("status_history") or [], new_data.get("status_history") or []
    held = old_data.get("hold_reason") is not None
    events = []
    for change in new_history[len(old_history) :]:  # the portal's trail only grows
        if change.get("status_raw") == PAYMENT_ON_HOLD:
            if not held:
                events.append("payment.held")
            held = True
        elif held:
            if change["status"] not in _PAYMENT_STOPPED:
                events.append("payment.released")
            held = False
    if (new_data.get("hold_reason") is not None) != held:  # what the history did not show
        if not held:
            events.append("payment.held")
        elif new_data["status"] not in _PAYMENT_STOPPED:
            events.append("payment.released")
    return events


def _events_on_arrival(object_type: str, data: dict[str, Any]) -> list[str]:
    """The events, beside `<type>.created`, of an object first seen past where it starts (see
    _ARRIVAL_BASELINE), from its served JSON."""
    baseline = _ARRIVAL_BASELINE.get(object_type)
    if baseline is None:
        return []
    changes = _events_for_change(object_type, {**data, **baseline}, data)
    return [event_type for event_type in changes if event_type not in _NOT_ON_ARRIVAL]


def lock_connection(session: Session, connection_id: str) -> None:
    """Hold the connection's row until the transaction ends, so transactions applying records of
    one connection apply them one at a time, each seeing what the one before it wrote (PostgreSQL;
    SQLite's writers are one at a time already). Two processes syncing one login (two gateways, a
    gateway and `plooto-api sync`) otherwise both inserted a new object (a unique violation), or both
    updated one: its events twice, its child rows twice."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Connection.id).where(Connection.id == connection_id).with_for_update())


def company_ids(session: Session, connection_id: str) -> dict[str, str]:
    """Gateway company ids of a connection, by the portal's company id (what apply_records needs)."""
    rows = session.execute(
        select(Company.upstream_id, Company.id).where(Company.connection_id == connection_id)
    )
    return {upstream_id: gateway_id for upstream_id, gateway_id in rows}


def mark_deleted(session: Session, row: Any, now: datetime) -> bool:
    """Mark a stored object deleted, the portal having confirmed it gone (a 404 for it), with its
    `<type>.deleted` event; whether it was not deleted already. Its document is rewritten with it."""
    if row.deleted_at is not None:
        return False
    row.deleted_at = now
    obj = mapping.to_schema(row)
    row.document = obj.model_dump_json()
    record_event(session, f"{obj.object}.deleted", data={"id": row.id, "object": obj.object},
                 connection_id=row.connection_id, company_id=obj.company_id, object_type=obj.object,
                 object_id=row.id)  # fmt: skip
    return True


def mark_gone(session: Session, row: Any, now: datetime) -> int:
    """mark_deleted, with the object's accounting links (sync mappings), which the portal lists only
    with their object and has no lookup of their own; how many were marked."""
    if not mark_deleted(session, row, now):
        return 0
    links = session.scalars(
        select(SyncMapping)
        .where(SyncMapping.object_id == row.id, SyncMapping.deleted_at.is_(None))
        .order_by(SyncMapping.id)
    )
    return 1 + sum(mark_deleted(session, link, now) for link in links)


def mark_company_gone(session: Session, company: Company, now: datetime) -> int:
    """Mark a company the portal confirms this login cannot reach deleted, with everything kept of
    it, each with its `<type>.deleted` event; how many were marked."""
    marked = 0
    for spec in mapping.OBJECT_MAPS.values():
        model: Any = spec.model
        if model is Company:
            continue
        rows = session.scalars(
            select(model).where(model.company_id == company.id, model.deleted_at.is_(None)).order_by(model.id)
        )
        marked += sum(mark_deleted(session, row, now) for row in rows)
    return marked + mark_deleted(session, company, now)


def apply_records(
    session: Session,
    connection_id: str,
    company_ids: dict[str, str],
    records: list[UpstreamRecord],
    now: datetime,
    *,
    first_pull: bool = False,
    absent: AbstractSet[tuple[str, str]] | None = None,
    completing: bool = False,
    news: AbstractSet[tuple[str, str]] = frozenset(),
) -> ApplyCounts:
    """Upsert `records` (mirrored objects of any type) and stage their events in `session`.

    `company_ids` maps portal company ids to gateway company ids; a company record adds itself.
    `first_pull`: the records come from a feed's first full listing, so the parts among them show
    what happened before the gateway looked (a reminder sent last month): history, which no event
    but `<type>.updated` reports.
    `absent`: None leaves a reference to an object the store lacks empty. A set (of (type, portal
    id) known not to exist) makes any other such reference raise MissingReferences before anything
    is written, so the caller can read those objects and apply them with the records.
    `news`: (type, portal id) of records that are a later pull's though `first_pull` is set (held
    by an earlier feed's later pull and written with this page, see sync.engine._Deferred): news.
    `completing`: the records complete objects a feed's first pull wrote in this run with references
    to objects of a later feed left empty: filling them in is history too, with no event (a first
    sync announced each recurring plan as created, then updated with the invoices it had all along).
    """
    counts = ApplyCounts()
    session.flush()  # the lookups below go to the database directly: let them see what the caller staged
    lock_connection(session, connection_id)
    by_type: defaultdict[str, list[UpstreamRecord]] = defaultdict(list)
    for record in records:
        if record.object_type in mapping.OBJECT_MAPS:
            by_type[record.object_type].append(record)
    existing = {
        object_type: _load_existing(session, connection_id, object_type, (r.upstream_id for r in recs))
        for object_type, recs in by_type.items()
    }
    # Every record gets its gateway id first, so records of one page can refer to each other.
    assigned: dict[tuple[str, str], str] = {}
    for object_type, recs in by_type.items():
        prefix = mapping.object_map_for(object_type).prefix
        for record in recs:
            row = existing[object_type].get(record.upstream_id)
            assigned[(object_type, record.upstream_id)] = row.id if row is not None else new_id(prefix)
    # The references each record holds, and which of its fields hold them (only those are copied
    # with the references resolved; the rest are passed on as they are).
    refs: defaultdict[str, set[str]] = defaultdict(set)
    ref_fields: dict[tuple[str, str], list[str]] = {}
    for record in records:
        ref_fields[(record.object_type, record.upstream_id)] = [
            key
            for key, value in record.fields.items()
            if isinstance(value, _NESTED) and _collect_refs(value, refs)
        ]
    ids = _gateway_ids(session, connection_id, refs, assigned)
    if absent is not None:
        missing = {
            (object_type, upstream_id)
            for object_type, upstream_ids in refs.items()
            if object_type in mapping.OBJECT_MAPS
            for upstream_id in upstream_ids
            if (object_type, upstream_id) not in ids and (object_type, upstream_id) not in absent
        }
        if missing:
            raise MissingReferences(missing)
    page = _Page(connection_id, company_ids, existing, ref_fields, ids, now, counts,
                 EventBatch(session, created_at=now), first_pull, completing, news=news)  # fmt: skip

    # Companies first, then each type in the order it came (feeds are in dependency order). One
    # flush per type: the unit of work orders inserts by relationship(), not by bare foreign keys.
    order = sorted(by_type, key=lambda object_type: object_type != "company")
    for object_type in order:
        inserts = _Inserts()
        for record in by_type[object_type]:
            _apply_one(page, record, inserts)
        inserts.execute(session, mapping.object_map_for(object_type))
        session.flush()
    # Parts (an invoice's reminders) last: the objects they belong to may have come in this page.
    parts: defaultdict[str, list[UpstreamRecord]] = defaultdict(list)
    for record in records:
        if record.object_type in mapping.PARTS:
            parts[record.object_type].append(record)
    for record_type, part_records in parts.items():
        _apply_parts(session, page, mapping.PARTS[record_type], part_records)
    counts.events += page.events.flush()  # in the order the changes were applied
    return counts


@dataclass
class _Page:
    """What applying one page's records shares."""

    connection_id: str
    company_ids: dict[str, str]
    existing: dict[str, dict[str, Any]]  # type -> upstream id -> stored row
    ref_fields: dict[tuple[str, str], list[str]]  # the fields of each record that hold references
    ids: dict[tuple[str, str], str]  # gateway ids of the page's objects and what they refer to
    now: datetime
    counts: ApplyCounts
    events: EventBatch
    first_pull: bool
    completing: bool = False
    # Objects with parts (invoices) written by this page, by gateway id: the served JSON before (None
    # for one created). Parts merged into one of them after it make one set of events, not two.
    before: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    news: AbstractSet[tuple[str, str]] = frozenset()  # records a later pull's (see apply_records)

    def history(self, keys: Iterable[tuple[str, str]]) -> bool:
        """Whether records with these keys are a first pull's (history, see apply_records)."""
        return self.first_pull and not (self.news and any(key in self.news for key in keys))


@dataclass
class _Inserts:
    """New rows of one type, inserted together (executemany) rather than one ORM object at a time."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    children: defaultdict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, spec: mapping.ObjectMap, stored: mapping.RowValues) -> None:
        self.rows.append(stored.values)
        for relationship, rows in stored.children.items():
            self.children[relationship] += [{**row, spec.child_key: stored.values["id"]} for row in rows]

    def execute(self, session: Session, spec: mapping.ObjectMap) -> None:
        if not self.rows:
            return
        # Inserts of the tables (the rows are column values already): no ORM bulk bookkeeping.
        insert_rows(session, spec.model.__table__, self.rows)
        for relationship, rows in self.children.items():
            insert_rows(session, spec.child_map(relationship).model.__table__, rows)


def _apply_one(page: _Page, record: UpstreamRecord, inserts: _Inserts) -> None:
    spec = mapping.object_map_for(record.object_type)
    key = (record.object_type, record.upstream_id)
    gateway_id = page.ids[key]
    if record.object_type == "company":
        page.company_ids[record.upstream_id] = gateway_id
    company_id = page.company_ids.get(record.company_upstream_id)
    if company_id is None:
        return  # a record of a company this login no longer reaches
    connection_id, counts, now = page.connection_id, page.counts, page.now
    row = page.existing[record.object_type].get(record.upstream_id)
    if row is not None and _older(record, row):
        # Read before what is stored (a sync page listed before a fresh read, written after): what
        # it says is past, and no event reports it.
        counts.unchanged += 1
        return
    old = mapping.to_schema(row) if row is not None else None
    data = dict(record.fields)
    for name in page.ref_fields[key]:
        data[name] = _resolve(data[name], page.ids)
    for name in spec.parts:  # filled by a feed of their own: an object's record does not carry them
        if name not in data and old is not None:
            data[name] = getattr(old, name)
    data.update({
        "id": gateway_id,
        "company_id": company_id,
        "upstream_id": record.upstream_id,
        # First sight fixes created_at: a portal object without a creation date gets the fetch time once.
        "created_at": old.created_at if old is not None else record.created_at,
        "updated_at": old.updated_at if old is not None else now,
        "upstream": {
            "status_raw": record.status_raw,
            "fetched_at": old.upstream.fetched_at if old is not None else now,
            "url": record.url,
        },
        "accounting_refs": record.accounting_refs,
    })  # fmt: skip
    new = spec.schema.model_validate(data)
    if old is None:
        # One dump, straight to JSON text, serves the new row's document and its event.
        document = new.model_dump_json()
        stored = mapping.row_values(new, connection_id=connection_id, document=document)
        stored.values["upstream_modified_at"] = record.version
        inserts.add(spec, stored)
        counts.created += 1
        event_types = [f"{record.object_type}.created"]
        if record.object_type in _ARRIVAL_BASELINE and not page.history([key]):
            # A feed's first listing shows history; later ones show what happened since the last.
            event_types += _events_on_arrival(record.object_type, orjson.loads(document))
        if spec.parts:
            page.before[gateway_id] = None
        _stage_events(page, record.object_type, event_types, document, company_id, gateway_id)
    else:
        _update(page, spec, row, old, new, record.version)


def _older(record: UpstreamRecord, row: Any) -> bool:
    """Whether `record` is an older read of the object than the stored `row`, by the portal's own
    last-modified times (unknown when either lacks one: then it is not)."""
    stored = row.upstream_modified_at
    return record.version is not None and stored is not None and record.version < stored


def _update(
    page: _Page, spec: mapping.ObjectMap, row: Any, old: Any, new: Any, version: datetime | None
) -> None:
    """Write `new` (the object as just read from the portal, last modified there at `version`) over
    the stored `row` (whose object is `old`) when what we serve changes, with its events."""
    payload = new.model_dump(mode="json")
    old_payload = old.model_dump(mode="json")
    if version is not None and (row.upstream_modified_at is None or version > row.upstream_modified_at):
        row.upstream_modified_at = version  # also when what we serve is unchanged: it orders later reads
    # Unchanged means the JSON we serve is unchanged (free-form fields hold Decimal before the
    # database and strings after). A deleted row that reappears differs in deleted_at.
    upstream = new.upstream.model_copy(update={"fetched_at": page.now})
    if payload == old_payload:
        # Read again, found the same: only when it was last read changes (no event, no update time).
        page.counts.unchanged += 1
        row.upstream_fetched_at = page.now
        row.document = new.model_copy(update={"upstream": upstream}).model_dump_json()
        return
    new = new.model_copy(update={"updated_at": page.now, "upstream": upstream})
    payload = new.model_dump(mode="json")
    document = json_dumps(payload)
    mapping.apply_to_row(mapping.row_values(new, connection_id=page.connection_id, document=document), row)
    page.counts.updated += 1
    if page.completing:
        return
    if spec.parts:
        page.before[new.id] = old_payload
    event_types = _events_for_change(spec.object_type, old_payload, payload)
    _stage_events(page, spec.object_type, event_types, document, new.company_id, new.id)


def _stage_events(page: _Page, object_type: str, event_types: list[str], document: str, company_id: str,
                  object_id: str, *, again: bool = False) -> None:  # fmt: skip
    if not again:  # (`again`: the object's events restaged, counted once)
        page.counts.by_type[object_type] += 1
    event_data = RawJSON(document)  # the events store the document's text, not a second serialization
    for event_type in event_types:
        page.events.add(
            event_type,
            data=event_data,
            connection_id=page.connection_id,
            company_id=company_id,
            object_type=object_type,
            object_id=object_id,
        )


def _apply_parts(session: Session, page: _Page, part: mapping.PartMap, records: list[UpstreamRecord]) -> None:
    """Merge part records (reminders) into the stored objects they belong to, by the part's portal id.
    A part whose object is not in the store is left out: the sync reads such objects first.

    A first sync merges thousands of parts, so this reads each object's served JSON (its document)
    rather than its row and every child row through the ORM, and writes back only the document, the
    update time and the list's own child rows, all in statements of many rows."""
    spec = mapping.object_map_for(part.parent_type)
    item_schema = spec.children[part.field].schema
    by_parent: defaultdict[str, dict[str, UpstreamRecord]] = defaultdict(dict)
    for record in records:  # the last record of a part wins (a page may list a part twice)
        by_parent[record.fields[part.parent_key].upstream_id][record.upstream_id] = record
    table = spec.model.__table__
    stored = rows_by_upstream_id(
        session, table, page.connection_id, list(by_parent), ("id", "document", "deleted_at")
    )
    merged: list[tuple[str, Any, str]] = []  # (gateway id, the object with its merged list, its JSON)
    again: list[tuple[str, Any, str, bool]] = []  # those of them this page wrote before (see _restage)
    for parent_upstream_id, parts in by_parent.items():
        if parent_upstream_id not in stored:
            continue  # gone from the portal, or of a company this login no longer reaches
        gateway_id, document, deleted_at = stored[parent_upstream_id]
        if document is None or deleted_at is not None:
            # Written before documents were kept, or deleted after (its document may predate that):
            # the columns say what it is.
            old = mapping.to_schema(session.get_one(spec.model, gateway_id)).model_dump(mode="json")
        else:
            old = orjson.loads(document)
        items = {item["upstream_id"]: item for item in old[part.field]}
        for upstream_id, record in parts.items():
            fields = {name: value for name, value in record.fields.items() if name != part.parent_key}
            stored_item = items.get(upstream_id)
            if (
                stored_item is not None
                and stored_item["status"] in part.final
                and fields["status"] not in part.final
            ):
                continue  # an older read than the stored item (see PartMap.final)
            # As the served JSON has it (dates as text), checked by the item's schema.
            items[upstream_id] = item_schema.model_validate(fields).model_dump(mode="json")
        new_items = sorted(items.values(), key=part.order)
        if new_items == old[part.field]:
            page.counts.unchanged += 1
            continue
        new = spec.schema.model_validate({**old, part.field: new_items, "updated_at": page.now})
        document = new.model_dump_json()
        merged.append((gateway_id, new, document))
        history = page.history((part.record_type, upstream_id) for upstream_id in parts)
        if gateway_id in page.before:
            again.append((gateway_id, new, document, history))
            continue
        page.counts.updated += 1
        if history:
            # Parts listed by their feed's first pull (the reminders an invoice had before the gateway
            # looked) are history, not a change: no event. (A first sync emitted an `invoice.updated`
            # for every invoice with reminders, the portal having changed nothing.)
            page.counts.by_type[spec.object_type] += 1
            continue
        event_types = _events_for_change(spec.object_type, old, {**old, part.field: new_items})
        _stage_events(page, spec.object_type, event_types, document, new.company_id, gateway_id)
    if again:
        _restage(page, spec, part, again)
    if merged:
        _write_parts(session, spec, part, merged, page.now)


def _restage(
    page: _Page, spec: mapping.ObjectMap, part: mapping.PartMap, merged: list[tuple[str, Any, str, bool]]
) -> None:
    """The events of objects this page wrote and then merged parts into (an invoice that changed and
    gained reminders since the last sync), staged again as those of one change: from what was served
    before the page to what is served after it, with the final JSON. (Two, the first without the
    parts, would show a state the portal never had.)"""
    page.events.drop({gateway_id for gateway_id, _, _, _ in merged})
    for gateway_id, new, document, history in merged:
        before = page.before[gateway_id]
        if before is None:
            event_types = [f"{spec.object_type}.created"]
            if spec.object_type in _ARRIVAL_BASELINE and not page.history(
                [(spec.object_type, new.upstream_id)]
            ):
                event_types += _events_on_arrival(spec.object_type, orjson.loads(document))
        else:
            after = new.model_dump(mode="json")
            if history:  # parts a feed's first pull lists are history (see _apply_parts)
                after[part.field] = before[part.field]
            event_types = _events_for_change(spec.object_type, before, after)
        _stage_events(page, spec.object_type, event_types, document, new.company_id, gateway_id, again=True)


def _write_parts(
    session: Session,
    spec: mapping.ObjectMap,
    part: mapping.PartMap,
    merged: list[tuple[str, Any, str]],
    now: datetime,
) -> None:
    """Store the merged objects' documents and update times, and replace their list's child rows."""
    table, child_table = spec.model.__table__, spec.child_map(part.field).model.__table__
    parent_column = child_table.c[spec.child_key]
    session.execute(
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(document=bindparam("new_document"), updated_at=bindparam("new_updated_at")),
        [{"row_id": gateway_id, "new_document": document, "new_updated_at": now}
         for gateway_id, _, document in merged],
    )  # fmt: skip
    ids = [gateway_id for gateway_id, _, _ in merged]
    for start in range(0, len(ids), IN_LIST_LIMIT):
        session.execute(delete(child_table).where(parent_column.in_(ids[start : start + IN_LIST_LIMIT])))
    insert_rows(session, child_table, [
        {**row, parent_column.key: gateway_id}
        for gateway_id, new, _ in merged
        for row in mapping.child_rows(new, part.field)
    ])  # fmt: skip
    # Rows the session holds (a write that read the object back) would otherwise show the old list.
    for gateway_id in ids:
        held = session.identity_map.get(identity_key(spec.model, gateway_id))
        if held is not None:
            session.expire(held)
