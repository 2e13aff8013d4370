"""The one mapping between store rows and normalized objects, in both directions.

Each object type is described once (`ObjectMap`): which schema fields are money and which columns
hold their minor units and currency, which are child collections, and which are renamed. Every
other field is copied by name. Reads (`to_schema`) and writes (`apply_to_row`) share the same
description, so they cannot drift apart.

Portal text is stored whole in each object's document; its typed columns (there for filters and
sorting) hold what fits them: clipped to a bounded column's length, and without NUL characters,
which PostgreSQL's text and JSONB cannot hold (see `_fit`). `to_schema` takes such text back
from the document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from sqlalchemy import JSON, String

from plooto_api import schemas
from plooto_api.money import from_minor, to_minor
from plooto_api.store import models
from plooto_api.store.base import Base


@dataclass
class RowValues:
    """Column values of one object's row, and the rows of its child tables by relationship name."""

    values: dict[str, Any]
    children: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# Columns never fitted: a row's identity (a clipped portal id would be another object's) and its
# document (JSON text, where a NUL character is the escape `\u0000`).
_IDENTITY = frozenset({"id", "connection_id", "company_id", "upstream_id", "document"})


@dataclass(frozen=True)
class _Fitting:
    """The columns of one table that portal text may not fit as it is, worked out once per table."""

    bounded: tuple[tuple[str, int], ...]  # (column, length) of each String(n) column
    text: tuple[str, ...]  # every text column, bounded or not
    json: tuple[str, ...]  # every JSON column
    # The bounded columns a full text in may have been clipped: not those of 3 characters or fewer,
    # which hold codes (currency, country) that fill them whenever they are well formed.
    gauged: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(
        cls, model: type[Any], exclude: frozenset[str], schema: type[BaseModel], renames: dict[str, str]
    ) -> _Fitting:
        """The text and JSON columns of `model`, leaving out those in `exclude` and the text columns
        of the fields of `schema` (renamed to columns by `renames`) whose every value fits (a status)."""
        table = model.__table__.c
        closed = {
            column
            for name, info in schema.model_fields.items()
            for column, values in [(renames.get(name, name), _closed_texts(info.annotation))]
            if values is not None and column in table
            and max(map(len, values), default=0) <= (getattr(table[column].type, "length", None) or 0)
        }  # fmt: skip
        columns = [column for column in table if column.key not in exclude]
        text = [column for column in columns if isinstance(column.type, String) and column.key not in closed]
        bounded = tuple((c.key, c.type.length) for c in text if c.type.length is not None)
        return cls(
            bounded=bounded,
            text=tuple(c.key for c in text),
            json=tuple(c.key for c in columns if isinstance(c.type, JSON)),
            gauged=tuple((column, length) for column, length in bounded if length > 3),
        )


def _closed_texts(annotation: Any) -> tuple[str, ...] | None:
    """The texts a field takes when it takes only some (`Literal[...]`, optionally `| None`)."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    values: list[Any] = []
    for arg in args:
        if arg is type(None):
            continue
        if get_origin(arg) is not Literal:
            return None
        values.extend(get_args(arg))
    return tuple(values) if values and all(isinstance(value, str) for value in values) else None


def _fit(values: dict[str, Any], fitting: _Fitting, nul: bool) -> None:
    """Fit one row's `values` to their columns, in place: NUL characters removed (only when `nul`:
    the object has some, which is rare), then each text clipped to its bounded column's length."""
    if nul:
        for column in fitting.text:
            value = values.get(column)
            if isinstance(value, str) and "\x00" in value:
                values[column] = value.replace("\x00", "")
        for column in fitting.json:
            if values.get(column) is not None:
                values[column] = _without_nul(values[column])
    for column, length in fitting.bounded:
        value = values.get(column)
        if isinstance(value, str) and len(value) > length:
            values[column] = value[:length]


def _without_nul(value: Any) -> Any:
    """A JSON value with the NUL characters of its texts (keys too) removed."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _restored(value: Any, original: Any) -> Any:
    """`value` (an object's data as its columns hold it) with each text a column holds fitted taken
    back from `original` (the same data in the object's document, written with those columns)."""
    if isinstance(value, str):
        if isinstance(original, str) and value != original and original.replace("\x00", "").startswith(value):
            return original
        return value
    if isinstance(value, dict) and isinstance(original, dict):
        if value.keys() - original.keys() and _without_nul(original) == value:
            return original  # a NUL in a key of a JSON value
        return {
            key: _restored(item, original[key]) if key in original else item for key, item in value.items()
        }
    if isinstance(value, list) and isinstance(original, list) and len(value) == len(original):
        return [_restored(item, item_original) for item, item_original in zip(value, original, strict=True)]
    return value


def _fills(row: Any, fitting: _Fitting) -> bool:
    """Whether a bounded text column of `row` is full (its text may have been clipped)."""
    for column, length in fitting.gauged:
        value = getattr(row, column)
        if isinstance(value, str) and len(value) >= length:
            return True
    return False


@dataclass(frozen=True)
class ChildMap:
    """A one-to-many collection stored in its own table (line items, status history, …)."""

    relationship: str
    model: type[Any]
    schema: type[BaseModel]
    money: dict[str, str] = field(default_factory=dict)  # schema field -> minor column; parent's currency
    renames: dict[str, str] = field(default_factory=dict)  # schema field -> column
    positioned: bool = False

    @cached_property
    def columns(self) -> tuple[tuple[str, str, bool, bool], ...]:
        """(schema field, column, is money, is JSON) for each field, worked out once rather than per row."""
        return tuple(
            (name, column, name in self.money, _is_json(self.model, column))
            for name in self.schema.model_fields
            for column in [self.money.get(name) or self.renames.get(name, name)]
        )

    @cached_property
    def fitting(self) -> _Fitting:
        """Its text and JSON columns, for `_fit` (all but the parent's id)."""
        parent = frozenset(column.key for column in self.model.__table__.c if column.foreign_keys)
        return _Fitting.of(self.model, parent, self.schema, self.renames)


@dataclass(frozen=True)
class ObjectMap:
    """How one normalized object type is stored."""

    object_type: str
    prefix: str
    schema: type[schemas.PortalObject]
    model: type[Any]
    money: dict[str, tuple[str, str]] = field(default_factory=dict)  # field -> (minor col, currency col)
    children: dict[str, ChildMap] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)
    currency_column: str = "currency"
    composite: frozenset[str] = frozenset()  # fields read_extra / write_extra store
    read_extra: Callable[[Any], dict[str, Any]] | None = None
    write_extra: Callable[[Any, str], RowValues] | None = None
    extra_children: tuple[ChildMap, ...] = ()  # child tables write_extra fills
    parts: frozenset[str] = frozenset()  # list fields a feed of their own fills (PARTS); kept otherwise

    @cached_property
    def plain_columns(self) -> tuple[tuple[str, str, bool], ...]:
        """(schema field, column, is JSON) of the fields stored as they are: every field that is not a
        base or row field, money, a child collection or composite. Worked out once, not per object."""
        special = _BASE_FIELDS | _ROW_FIELDS | set(self.money) | set(self.children) | self.composite
        return tuple(
            (name, column, _is_json(self.model, column))
            for name in self.schema.model_fields
            if name not in special
            for column in [self.renames.get(name, name)]
        )

    @cached_property
    def fitting(self) -> _Fitting:
        """Its text and JSON columns, for `_fit` (not the row's identity or its document)."""
        return _Fitting.of(self.model, _IDENTITY, self.schema, self.renames)

    @cached_property
    def child_fittings(self) -> dict[str, _Fitting]:
        """The `fitting` of each child table, by relationship name."""
        return {
            child.relationship: child.fitting for child in (*self.children.values(), *self.extra_children)
        }

    @property
    def child_key(self) -> str:
        """The column of its child tables that holds the parent's id."""
        return f"{self.object_type}_id"

    def child_map(self, relationship: str) -> ChildMap:
        """The ChildMap stored under a relationship name."""
        for child in (*self.children.values(), *self.extra_children):
            if child.relationship == relationship:
                return child
        raise KeyError(relationship)


_BASE_FIELDS = frozenset({"object", "upstream", "accounting_refs", "company_id"})
_ROW_FIELDS = frozenset({"id", "upstream_id", "created_at", "updated_at", "deleted_at"})

_LINE_ITEMS = {"unit_price": "unit_price_minor", "amount": "amount_minor"}
_APPROVAL_STEP = ChildMap(
    "approval_steps",
    models.BillApprovalStep,
    schemas.ApprovalStep,
    renames={"approver_id": "approver_user_id"},
    positioned=True,
)


def _bill_approval_read(row: models.Bill) -> dict[str, Any]:
    return {
        "approval": {
            "status": row.approval_status,
            "steps": [_child_to_dict(_APPROVAL_STEP, step, row.currency) for step in row.approval_steps],
        }
    }


def _bill_approval_write(obj: schemas.Bill, currency: str) -> RowValues:
    return RowValues(
        {"approval_status": obj.approval.status},
        {_APPROVAL_STEP.relationship: _child_rows(_APPROVAL_STEP, obj.approval.steps, currency)},
    )


def _money_fields(*names: str) -> dict[str, tuple[str, str]]:
    return {name: (f"{name}_minor", "currency") for name in names}


OBJECT_MAPS: dict[str, ObjectMap] = {
    m.object_type: m
    for m in (
        # A company's bank accounts are its accounts' own rows: put together when it is read
        # (services.objects), not stored with it.
        ObjectMap(
            "company", "cmp", schemas.Company, models.Company,
            composite=frozenset({"bank_accounts", "connection_id"}),
            read_extra=lambda _row: {"bank_accounts": None, "connection_id": None},
        ),
        ObjectMap(
            "bank_account", "ba", schemas.BankAccount, models.BankAccount,
            money={"balance": ("balance_minor", "currency")},
        ),
        ObjectMap(
            "user", "usr", schemas.User, models.PortalUser,
        ),
        ObjectMap(
            "approval_rule", "apr", schemas.ApprovalRule, models.ApprovalRule,
            money=_money_fields("min_amount", "max_amount"),
        ),
        ObjectMap("vendor", "ven", schemas.Vendor, models.Vendor),
        ObjectMap("customer", "cus", schemas.Customer, models.Customer),
        ObjectMap(
            "bill", "bill", schemas.Bill, models.Bill,
            money=_money_fields("subtotal", "tax", "total", "amount_paid", "amount_scheduled", "amount_due"),
            children={
                "line_items": ChildMap(
                    "line_items", models.BillLineItem, schemas.LineItem, _LINE_ITEMS, positioned=True
                )
            },
            composite=frozenset({"approval"}),
            extra_children=(_APPROVAL_STEP,),
            read_extra=_bill_approval_read,
            write_extra=_bill_approval_write,
        ),
        ObjectMap(
            "payment", "pay", schemas.Payment, models.Payment,
            money={"amount": ("amount_minor", "currency"), "fee": ("fee_minor", "fee_currency")},
            children={
                "status_history": ChildMap(
                    "status_history", models.PaymentStatusChange, schemas.PaymentStatusChange
                ),
                "allocations": ChildMap(
                    "allocations", models.PaymentAllocation, schemas.PaymentAllocation,
                    {"amount": "amount_minor"},
                ),
            },
        ),
        ObjectMap(
            "invoice", "inv", schemas.Invoice, models.Invoice,
            money=_money_fields("subtotal", "tax", "total", "amount_paid", "amount_due"),
            children={
                "line_items": ChildMap(
                    "line_items", models.InvoiceLineItem, schemas.LineItem, _LINE_ITEMS, positioned=True
                ),
                "reminders": ChildMap("reminders", models.InvoiceReminder, schemas.InvoiceReminder),
            },
            parts=frozenset({"reminders"}),
        ),
        ObjectMap(
            "recurring_invoice", "rinv", schemas.RecurringInvoice, models.RecurringInvoice,
            money=_money_fields("amount"),
        ),
        ObjectMap(
            "transaction", "txn", schemas.Transaction, models.Transaction, money=_money_fields("amount")
        ),
        ObjectMap(
            "fx_conversion", "fx", schemas.FxConversion, models.FxConversion,
            money={
                "source": ("source_amount_minor", "source_currency"),
                "target": ("target_amount_minor", "target_currency"),
                "fee": ("fee_minor", "fee_currency"),
            },
        ),
        ObjectMap("captured_document", "doc", schemas.CapturedDocument, models.CapturedDocument),
        ObjectMap("sync_mapping", "smap", schemas.SyncMapping, models.SyncMapping),
    )
}  # fmt: skip


@dataclass(frozen=True)
class PartMap:
    """Records that are items of another object's list field (an invoice's reminders), listed by a
    feed of their own. Items are kept by their portal id (`upstream_id`), in `order`."""

    record_type: str
    parent_type: str
    field: str
    order: Callable[[dict[str, Any]], Any]
    # Statuses an item never leaves in the portal: a record of it in another status is an older read
    # (held by a run while another wrote the newer one), which must not take the item back.
    final: frozenset[str] = frozenset()

    @property
    def parent_key(self) -> str:
        """The record field that refers to the parent."""
        return f"{self.parent_type}_id"


PARTS: dict[str, PartMap] = {
    "invoice_reminder": PartMap(
        "invoice_reminder", "invoice", "reminders",
        order=lambda item: (item["scheduled_for"] is None, item["scheduled_for"] or "", item["upstream_id"] or ""),
        final=frozenset({"sent", "cancelled"}),
    ),
}  # fmt: skip

_MAP_BY_MODEL: dict[type[Any], ObjectMap] = {m.model: m for m in OBJECT_MAPS.values()}


def object_map_for(row_or_type: Any) -> ObjectMap:
    """The ObjectMap of a row, a model class or an object type name."""
    if isinstance(row_or_type, str):
        return OBJECT_MAPS[row_or_type]
    model = row_or_type if isinstance(row_or_type, type) else type(row_or_type)
    return _MAP_BY_MODEL[model]


def _money(minor: int | None, currency: str | None) -> dict[str, Any] | None:
    if minor is None or currency is None:
        return None
    return {"amount": from_minor(minor, currency), "currency": currency}


def _child_to_dict(child: ChildMap, row: Any, currency: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in child.schema.model_fields:
        if name in child.money:
            data[name] = _money(getattr(row, child.money[name]), currency)
        else:
            data[name] = getattr(row, child.renames.get(name, name))
    return data


def to_schema(row: Base) -> schemas.PortalObject:
    """Turn a store row into its normalized object."""
    spec = object_map_for(row)
    data: dict[str, Any] = {
        "company_id": row.id if spec.model is models.Company else row.company_id,  # type: ignore[attr-defined]
        "upstream": {
            "status_raw": row.upstream_status_raw,  # type: ignore[attr-defined]
            "fetched_at": row.upstream_fetched_at,  # type: ignore[attr-defined]
            "url": row.upstream_url,  # type: ignore[attr-defined]
        },
        "accounting_refs": {
            "quickbooks": row.quickbooks_id,  # type: ignore[attr-defined]
            "xero": row.xero_id,  # type: ignore[attr-defined]
            "netsuite": row.netsuite_id,  # type: ignore[attr-defined]
        },
    }
    if spec.read_extra:
        data.update(spec.read_extra(row))
    currency = getattr(row, spec.currency_column, None)
    for name in spec.schema.model_fields:
        if name in data or name in _BASE_FIELDS:
            continue
        if name in spec.money:
            minor_col, currency_col = spec.money[name]
            data[name] = _money(getattr(row, minor_col), getattr(row, currency_col))
        elif name in spec.children:
            child = spec.children[name]
            data[name] = [_child_to_dict(child, c, currency or "") for c in getattr(row, child.relationship)]
        else:
            data[name] = getattr(row, spec.renames.get(name, name))
    document = row.document  # type: ignore[attr-defined]
    if document is not None and _may_be_fitted(spec, row, document):
        data = _restored(data, orjson.loads(document))
    return spec.schema.model_validate(data)


def _may_be_fitted(spec: ObjectMap, row: Any, document: str) -> bool:
    """Whether a column of `row` may hold a text fitted to it (`_fit`): its document has a NUL
    character, or a bounded text column is full. Only then are the columns compared with the document."""
    if "\\u0000" in document or _fills(row, spec.fitting):
        return True
    return any(
        _fills(child_row, child.fitting)
        for child in (*spec.children.values(), *spec.extra_children)
        if child.fitting.gauged
        for child_row in getattr(row, child.relationship)
    )


def _is_json(model: type[Any], column: str) -> bool:
    """Whether `column` of `model` is a JSON column: its values (models, dicts, lists, possibly holding
    dates or decimals) are bound as plain JSON; other columns take values as they are."""
    return isinstance(model.__table__.c[column].type, JSON)


def _child_rows(child: ChildMap, items: Sequence[BaseModel], currency: str) -> list[dict[str, Any]]:
    rows = []
    for position, item in enumerate(items):
        values: dict[str, Any] = {}
        for name, column, is_money, is_json in child.columns:
            value = getattr(item, name)
            if is_money:
                values[column] = None if value is None else to_minor(value.amount, currency)
            elif is_json:
                values[column] = to_jsonable_python(value)
            else:
                values[column] = value
        if child.positioned:
            values["position"] = position
        rows.append(values)
    return rows


def row_values(obj: schemas.PortalObject, *, connection_id: str, document: str | None = None) -> RowValues:
    """The column values (and child rows) that store a normalized object: the one write mapping,
    used for ORM updates and for bulk inserts alike. `document` is the object's JSON when the caller
    has it already."""
    spec = OBJECT_MAPS[obj.object]
    values: dict[str, Any] = {
        "id": obj.id,
        "connection_id": connection_id,
        "upstream_id": obj.upstream_id,
        "created_at": obj.created_at,
        "updated_at": obj.updated_at,
        "deleted_at": obj.deleted_at,
        "upstream_status_raw": obj.upstream.status_raw,
        "upstream_fetched_at": obj.upstream.fetched_at,
        "upstream_url": obj.upstream.url,
        "quickbooks_id": obj.accounting_refs.quickbooks,
        "xero_id": obj.accounting_refs.xero,
        "netsuite_id": obj.accounting_refs.netsuite,
        "document": obj.model_dump_json() if document is None else document,
    }
    if spec.model is not models.Company:
        values["company_id"] = obj.company_id
    # Currencies first: money fields are converted to minor units in their own currency.
    for name, (minor_col, currency_col) in spec.money.items():
        value = getattr(obj, name)
        if value is not None:
            current = values.get(currency_col)
            if current not in (None, value.currency):
                raise ValueError(f"{spec.object_type}.{name} is in {value.currency}, not {current}")
            values[currency_col] = value.currency
            values[minor_col] = to_minor(value.amount, value.currency)
        else:
            values[minor_col] = None
            if currency_col != spec.currency_column:
                values[currency_col] = None
    for name, column, is_json in spec.plain_columns:
        values[column] = to_jsonable_python(getattr(obj, name)) if is_json else getattr(obj, name)
    currency = values.get(spec.currency_column) or ""
    children = {
        child.relationship: _child_rows(child, getattr(obj, name), currency)
        for name, child in spec.children.items()
    }
    if spec.write_extra is not None:
        extra = spec.write_extra(obj, currency)
        values.update(extra.values)
        children.update(extra.children)
    # The document holds each text whole; the columns what fits them. A NUL character is written
    # `\u0000` in JSON, so only an object whose document has that looks for NULs.
    nul = "\\u0000" in values["document"]
    _fit(values, spec.fitting, nul)
    for relationship, rows in children.items():
        fitting = spec.child_fittings[relationship]
        for child_values in rows:
            _fit(child_values, fitting, nul)
    return RowValues(values, children)


def child_rows(obj: schemas.PortalObject, name: str) -> list[dict[str, Any]]:
    """The rows that store one child collection (field `name`) of a normalized object, as `row_values`
    makes them, without the rest of the object's columns."""
    child = OBJECT_MAPS[obj.object].children[name]
    if child.money:  # in the currency row_values works out from the object's money fields
        return row_values(obj, connection_id="").children[child.relationship]
    rows = _child_rows(child, getattr(obj, name), "")
    for values in rows:
        _fit(values, child.fitting, nul=True)
    return rows


def apply_to_row(stored: RowValues, row: Any) -> Any:
    """Write an object's stored form (`row_values`) onto a store row (new or existing); returns the row."""
    spec = object_map_for(row)
    for column, value in stored.values.items():
        setattr(row, column, value)
    for relationship, rows in stored.children.items():
        child = spec.child_map(relationship)
        setattr(row, relationship, [child.model(**values) for values in rows])
    return row


def new_row(obj: schemas.PortalObject, *, connection_id: str) -> Any:
    """A new store row for a normalized object."""
    spec = OBJECT_MAPS[obj.object]
    return apply_to_row(row_values(obj, connection_id=connection_id), spec.model())


# --- gateway objects -------------------------------------------------------------------------------


def connection_to_schema(row: models.Connection) -> schemas.Connection:
    """A connection row as its API object."""
    return schemas.Connection.model_validate(row, from_attributes=True)


def operation_to_schema(row: models.Operation) -> schemas.Operation:
    """An operation row as its API object."""
    return schemas.Operation.model_validate(row, from_attributes=True)


def event_to_schema(row: models.Event) -> schemas.Event:
    """An event row as its API object."""
    return schemas.Event.model_validate(row, from_attributes=True)


def webhook_endpoint_to_schema(row: models.WebhookEndpoint) -> schemas.WebhookEndpoint:
    """A webhook endpoint row as its API object (never its secret)."""
    return schemas.WebhookEndpoint(
        id=row.id,
        url=row.url,
        description=row.description,
        events=row.event_types,
        companies=row.company_ids,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def api_token_to_schema(row: models.ApiToken) -> schemas.ApiToken:
    """An API token row as its API object (prefix only, never the hash or secret)."""
    return schemas.ApiToken(
        id=row.id,
        name=row.name,
        kind=row.kind,
        prefix=row.prefix,
        scopes=row.scopes,
        companies=row.company_ids,
        connection_id=row.connection_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def audit_entry_to_schema(row: models.AuditEntry) -> schemas.AuditEntry:
    """An audit row as its API object."""
    return schemas.AuditEntry.model_validate(row, from_attributes=True)
