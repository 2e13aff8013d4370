"""Reading mirrored objects: the filters each list accepts, and the queries behind them.

Each resource is declared once (`RESOURCES`): its path, object type, read scope and filters. The
API builds its routes and their OpenAPI from this table; the tenant scope is applied by the
repository, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import orjson
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from plooto_api import mapping, schemas
from plooto_api.money import to_minor
from plooto_api.schemas.objects import ApprovalStatus
from plooto_api.store import models
from plooto_api.store.pagination import Page, PageRequest
from plooto_api.store.repository import ObjectRepository
from plooto_api.store.scope import AccessScope

Op = Literal["eq", "gte", "lte"]
MAX_MINOR = 2**63 - 1  # amounts are 64-bit minor units in the store


@dataclass(frozen=True)
class Filter:
    """One query parameter of a list and the column condition it becomes."""

    param: str
    column: str
    op: Op = "eq"
    type: Any = str  # a type, or a Literal of the values it takes
    description: str = ""
    money: bool = False  # a decimal amount compared with a *_minor column


def _eq(param: str, column: str | None = None, kind: Any = str, description: str = "") -> Filter:
    return Filter(param, column or param, "eq", kind, description)


def _range(prefix: str, column: str, kind: type, what: str) -> list[Filter]:
    return [
        Filter(f"{prefix}_from", column, "gte", kind, f"{what} on or after"),
        Filter(f"{prefix}_to", column, "lte", kind, f"{what} on or before"),
    ]


def _amount(column: str) -> list[Filter]:
    return [
        Filter("amount_min", column, "gte", Decimal, "amount at least (decimal string)", money=True),
        Filter("amount_max", column, "lte", Decimal, "amount at most (decimal string)", money=True),
    ]


COMPANY = _eq("company", "company_id", description="company (client book) id")
UPDATED = Filter("updated_since", "updated_at", "gte", datetime, "changed at or after (ISO 8601 with zone)")
CURRENCY = _eq("currency", description="ISO 4217 code, e.g. CAD")


@dataclass(frozen=True)
class Resource:
    """A readable collection of one mirrored object type."""

    path: str
    object_type: str
    scope: str
    filters: list[Filter] = field(default_factory=list)
    description: str = ""
    # Puts together what an object shows of other objects, when it is read: (session, the caller's
    # scope, documents) -> the documents served.
    compose: Callable[[Session, AccessScope, list[str]], list[str]] | None = None

    @property
    def model(self) -> Any:
        return mapping.object_map_for(self.object_type).model

    @property
    def schema(self) -> type[schemas.PortalObject]:
        return mapping.object_map_for(self.object_type).schema


def _summaries(
    session: Session,
    access: AccessScope,
    model: Any,
    summary: type[schemas.Schema],
    company_ids: set[str],
    *conditions: ColumnElement[bool],
) -> dict[str, list[dict[str, Any]]]:
    """The `summary` fields of the `model` objects of these companies the caller may read, by company."""
    repository = ObjectRepository(session, model)
    rows = session.scalars(
        repository.readable_statement(access).where(model.company_id.in_(company_ids), *conditions)
        .order_by(model.id)
    )  # fmt: skip
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        document = orjson.loads(row.document or mapping.to_schema(row).model_dump_json())
        found.setdefault(row.company_id, []).append({name: document[name] for name in summary.model_fields})
    return found


def _compose_companies(session: Session, access: AccessScope, documents: list[str]) -> list[str]:
    """Companies with their bank accounts (default first) and a summary of their active approval rules."""
    companies = [orjson.loads(document) for document in documents]
    ids = {company["id"] for company in companies}
    rows = session.execute(
        select(models.Company.id, models.Company.connection_id).where(models.Company.id.in_(ids))
    )
    connections = {company_id: connection_id for company_id, connection_id in rows}
    accounts = _summaries(session, access, models.BankAccount, schemas.CompanyBankAccount, ids)
    rules = _summaries(
        session,
        access,
        models.ApprovalRule,
        schemas.CompanyApprovalRule,
        ids,
        models.ApprovalRule.active.is_(True),
    )
    for company in companies:
        company["connection_id"] = connections.get(company["id"])
        company["bank_accounts"] = sorted(accounts.get(company["id"], []), key=lambda a: not a["is_default"])
        company["approval_policy"] = {**company["approval_policy"], "rules": rules.get(company["id"], [])}
    return [orjson.dumps(company).decode() for company in companies]


RESOURCES: list[Resource] = [
    Resource("companies", "company", "companies:read",
             [_eq("connection", "connection_id", description="connection (portal login) id"), UPDATED],
             "Client books the logins reach.",
             compose=_compose_companies),
    Resource("bank_accounts", "bank_account", "bank_accounts:read", [COMPANY, CURRENCY, UPDATED],
             "Funding accounts and wallets (numbers masked)."),
    Resource("users", "user", "users:read", [COMPANY, _eq("role"), UPDATED], "Portal users per company."),
    Resource("approval_rules", "approval_rule", "approvals:read", [COMPANY, _eq("applies_to"), UPDATED],
             "Approval policies and signing authorities."),
    Resource("vendors", "vendor", "vendors:read",
             [COMPANY, CURRENCY, _eq("network_connected", kind=bool), _eq("status"), UPDATED], "Payees."),
    Resource("customers", "customer", "customers:read", [COMPANY, CURRENCY, _eq("status"), UPDATED], "Payers."),
    Resource("bills", "bill", "bills:read",
             [COMPANY, _eq("vendor", "vendor_id"), _eq("status"), _eq("approval_status", kind=ApprovalStatus), CURRENCY,
              *_range("due_date", "due_date", date, "due"), *_range("issue_date", "issue_date", date, "issued"),
              *_amount("total_minor"), UPDATED], "Payable documents with their approval state."),
    Resource("payments", "payment", "payments:read",
             [COMPANY, _eq("vendor", "vendor_id"), _eq("customer", "customer_id"), _eq("status"),
              _eq("direction"), _eq("method"), CURRENCY,
              *_range("scheduled", "scheduled_for", date, "scheduled debit date"), *_amount("amount_minor"),
              UPDATED], "Payable and receivable payments with their status history."),
    Resource("invoices", "invoice", "invoices:read",
             [COMPANY, _eq("customer", "customer_id"), _eq("status"), CURRENCY,
              _eq("recurring_invoice", "recurring_invoice_id"),
              *_range("due_date", "due_date", date, "due"), *_range("issue_date", "issue_date", date, "issued"),
              *_amount("total_minor"), UPDATED], "Receivable documents, with reminders and recurring links."),
    Resource("recurring_invoices", "recurring_invoice", "invoices:read",
             [COMPANY, _eq("customer", "customer_id"), _eq("status"), UPDATED], "Recurring invoice schedules."),
    Resource("transactions", "transaction", "transactions:read",
             [COMPANY, _eq("bank_account", "bank_account_id"), _eq("payment", "payment_id"), _eq("kind"),
              CURRENCY, *_range("occurred", "occurred_on", date, "occurred"), UPDATED],
             "Account movements: debits, credits, fees, transfers."),
    Resource("fx_conversions", "fx_conversion", "fx_conversions:read",
             [COMPANY, _eq("payment", "payment_id"), _eq("status"), UPDATED], "Currency conversions."),
    Resource("documents", "captured_document", "documents:read", [COMPANY, _eq("status"), UPDATED],
             "Documents in Capture, with OCR fields."),
    Resource("sync_mappings", "sync_mapping", "sync_mappings:read",
             [COMPANY, _eq("provider"), _eq("object_type"), _eq("object", "object_id"), UPDATED],
             "Links to records in QuickBooks, Xero and NetSuite."),
]  # fmt: skip

RESOURCES_BY_PATH = {r.path: r for r in RESOURCES}

# The events of no synced object type, and the scope that reads them.
OTHER_EVENT_SCOPES = {"connection": "connections:read", "webhook_endpoint": "webhooks:read"}


def readable_object_types(scopes: Collection[str]) -> frozenset[str] | None:
    """The object types a token with `scopes` may read, or None for every type. Wherever an object is
    shown whole (its events at `GET /events` and at the webhook endpoints the token made, an
    approval's bill or payment), it is shown only to a token that may read its type."""
    if "*" in scopes:
        return None
    types = {resource.object_type for resource in RESOURCES if resource.scope in scopes}
    return frozenset(types | {kind for kind, scope in OTHER_EVENT_SCOPES.items() if scope in scopes})


def _closed_set(annotation: Any) -> Any | None:
    """The Literal of a field whose values are a closed set (`Literal[...]`, optionally `| None`)."""
    if get_origin(annotation) is Literal:
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        literals = [arg for arg in get_args(annotation) if get_origin(arg) is Literal]
        return literals[0] if len(literals) == 1 else None
    return None


def filter_type(resource: Resource, spec: Filter) -> Any:
    """The type a filter's value is validated as: a string filter on a field whose values are a
    closed set (a status, a method) takes only those values, so a misspelt one is refused rather
    than matching nothing."""
    if spec.type is not str or spec.param != spec.column:  # `object` filters on object_id, not on `object`
        return spec.type
    field_info = resource.schema.model_fields.get(spec.param)
    closed = _closed_set(field_info.annotation) if field_info is not None else None
    return closed if closed is not None else str


class FilterValueError(ValueError):
    """A filter's value the store cannot compare (an amount finer than its currency's cents, or past
    any amount): a 400 naming the filter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def conditions(resource: Resource, params: dict[str, Any]) -> list[ColumnElement[bool]]:
    """Column conditions for the given filter values (None values are ignored). FilterValueError
    for an amount the store cannot compare."""
    model = resource.model
    result: list[ColumnElement[bool]] = []
    currency = params.get("currency") or "CAD"
    for spec in resource.filters:
        value = params.get(spec.param)
        if value is None:
            continue
        if spec is CURRENCY:
            value = value.upper()  # ISO 4217 codes are stored upper-case: `cad` matched nothing
        if spec.money:
            try:
                value = to_minor(value, currency)
            except ValueError as exc:
                hint = (
                    ""
                    if params.get("currency")
                    else " (amounts are compared in cents unless currency= says otherwise)"
                )
                raise FilterValueError(spec.param, f"{exc}{hint}") from None
            if abs(value) > MAX_MINOR:
                raise FilterValueError(spec.param, "is out of range")
        column = getattr(model, spec.column)
        if spec.op == "eq":
            result.append(column == value)
        elif spec.op == "gte":
            result.append(column >= value)
        else:
            result.append(column <= value)
    return result


def list_documents(
    session: Session, resource: Resource, access: AccessScope, params: dict[str, Any], page: PageRequest
) -> Page[str]:
    """A page of objects matching `params`, within `access`, as their stored JSON documents."""
    repository = ObjectRepository(session, resource.model)
    rows = repository.list_documents(access, page, conditions(resource, params))
    documents = [row.document or _rebuilt(repository, access, row.id) for row in rows.items]
    if resource.compose is not None and documents:
        documents = resource.compose(session, access, documents)
    return Page(items=documents, has_more=rows.has_more, next_cursor=rows.next_cursor)


def get_document(session: Session, resource: Resource, access: AccessScope, object_id: str) -> str | None:
    """One object's JSON document, or None when it does not exist for this caller. An object the
    portal no longer has is served as it was last seen, with its `deleted_at`: the objects that
    refer to it (a payment of a deleted bill) do not point at nothing."""
    row = ObjectRepository(session, resource.model).get(object_id, access, deleted=True)
    if row is None:
        return None
    document = row.document or mapping.to_schema(row).model_dump_json()
    return document if resource.compose is None else resource.compose(session, access, [document])[0]


def _rebuilt(repository: ObjectRepository[Any], access: AccessScope, object_id: str) -> str:
    # A row written before documents were kept: build its JSON from the columns.
    row = repository.get(object_id, access)
    assert row is not None
    return mapping.to_schema(row).model_dump_json()


def row_for(session: Session, resource: Resource, access: AccessScope, object_id: str) -> Any | None:
    """The store row behind an object the caller may see (for a refresh from the portal)."""
    return ObjectRepository(session, resource.model).get(object_id, access)


Refresher = Callable[[str, str, str, str], Any]
__all__ = [
    "OTHER_EVENT_SCOPES",
    "RESOURCES",
    "RESOURCES_BY_PATH",
    "Filter",
    "Resource",
    "conditions",
    "get_document",
    "list_documents",
    "models",
    "readable_object_types",
]
