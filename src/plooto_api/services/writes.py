"""Writes to the portal that never happen twice: intents, execution, read-back and recovery.

A write becomes an `Operation` whose intent (kind, resolved portal parameters and a unique
`reference`) is committed BEFORE anything is sent. Writes that create an object put the reference
into it (a payment's external reference, a bill's or invoice's memo). After any unknown outcome —
a timeout, a dropped connection, a 5xx, the gateway killed mid-request — the operation reads the
portal back and matches the reference before it may send again; while the portal may still be
applying an earlier send (the settle window), "not found" proves nothing and nothing is re-sent.
Decisions the portal itself refuses to repeat (approve, reject, cancel) are simply sent again and
a "decided already" answer is checked against the object.

An operation a portal outage leaves open is not forgotten: it carries the time it is to be tried again
(`retry_at`, later as the outage goes on) and the periodic retry (`retry_due`) takes it up then, until
it ends or expires. One never sent is failed once `write_expire_seconds` have passed since it was
requested (its key released), and from then on it is never sent; one sent before is read back first
and, past that age, counts as done only if the portal shows it, never sent again.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from plooto_api import mapping
from plooto_api.jobs.context import JobContext
from plooto_api.log import get_logger
from plooto_api.money import from_minor, to_minor
from plooto_api.services import audit, idempotency
from plooto_api.services import objects as object_service
from plooto_api.services.connections import (
    login_blocked_reason,
    mark_upstream_changed,
    record_login_failure_of,
    uncleared_drift,
)
from plooto_api.services.tokens import Principal
from plooto_api.store import models
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models.gateway import UNFINISHED_WRITES
from plooto_api.sync.upsert import references
from plooto_api.upstream import (
    AmbiguousWriteOutcome,
    AuthenticationError,
    NotFound,
    PermissionDenied,
    PortalRuleViolation,
    PortalSession,
    RateLimited,
    SessionExpired,
    UpstreamChanged,
    UpstreamError,
    UpstreamRecord,
    UpstreamRef,
    UpstreamUnavailable,
    WriteResult,
    request_field,
)
from plooto_api.upstream.portal import PAYMENT_CANCELLED

log = get_logger(__name__)

_T = TypeVar("_T")

TERMINAL = {"succeeded", "failed", "requires_action"}
MAX_SENDS = 5  # sends of one operation, each after a read-back that found nothing
# Sends in a row the portal refuses with an error of its own (a 5xx in its envelope: nothing applied)
# before the write is left for the periodic retry, those sends taken back.
REFUSALS_BEFORE_RETRY = 3
READ_BACK_POLL_SECONDS = 0.25  # the first look again after an unknown outcome; then 1.5x longer each
READ_BACK_POLL_MAX_SECONDS = 5.0
RESEND_DELAY_MAX_SECONDS = 4.0
RETRY_DELAY_MAX_SECONDS = 300.0  # the longest wait between two tries of a write the portal did not take
ATTACHMENT_MAX_BYTES = 10 * 1024 * 1024

# The portal's refusal codes as the API states them: (HTTP status, our code).
PORTAL_CODES: dict[str, tuple[int, str]] = {
    "AmountExceedsOpenBalance": (422, "amount_exceeds_amount_due"),
    "BillNotApproved": (422, "bill_not_approved"),
    "SelfApprovalNotAllowed": (422, "self_approval_not_allowed"),
    "NotAnApprover": (422, "not_an_approver"),
    "AlreadyDecided": (409, "already_decided"),
    "InvalidState": (409, "invalid_state"),
    "DebitDateInPast": (422, "debit_date_in_past"),
    "CutOffPassed": (422, "cut_off_passed"),
    "CurrencyMismatch": (422, "currency_mismatch"),
    "PaymentMethodUnavailable": (422, "payment_method_unavailable"),
    "BankAccountNotVerified": (422, "bank_account_not_verified"),
    "BusinessRuleViolation": (422, "portal_rule_violation"),
    "ValidationFailed": (422, "portal_validation_failed"),
}
_DECIDED_ALREADY = {"AlreadyDecided", "InvalidState"}


class WriteRefused(Exception):
    """The gateway refuses a write before sending it (the caller's mistake or a portal rule it knows)."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclass
class Intent:
    """A write resolved against the store, ready to be recorded."""

    kind: str
    connection_id: str
    company_id: str
    request: dict[str, Any]  # portal-level parameters (upstream ids), JSON values only
    object_type: str  # what the write returns
    object_id: str | None = None  # the gateway object it acts on, if any
    object_id_type: str | None = None  # the type of `object_id` when not `object_type` (a payment's bill)


# --- resolving requests against the store (checks the store can make before sending) ----------


def _resource(object_type: str) -> object_service.Resource:
    return next(r for r in object_service.RESOURCES if r.object_type == object_type)


def _visible(session: Session, principal: Principal, object_type: str, object_id: str, param: str) -> Any:
    row = object_service.row_for(session, _resource(object_type), principal.access, object_id)
    if row is None or getattr(row, "deleted_at", None) is not None:
        raise WriteRefused(404, "not_found", f"no {object_type.replace('_', ' ')} {object_id}", param=param)
    return row


def drift_blocks_writes(connection_id: str, drift: list[str]) -> str:
    """Why writes are refused while the portal's shape differs, and what lifts it."""
    shown = "; ".join(drift[:3]) + (f" (and {len(drift) - 3} more)" if len(drift) > 3 else "")
    return (
        f"the portal answered in a shape this gateway does not know ({shown or 'see the connection'}); "
        f"writes stay blocked until an operator checks it and clears it: "
        f"`plooto-api connections clear-drift {connection_id}` or POST /connections/{connection_id}/clear_drift"
    )


def _writable_connection(session: Session, connection_id: str) -> models.Connection:
    connection = session.get(models.Connection, connection_id)
    if connection is None:
        raise WriteRefused(404, "not_found", "the object's connection no longer exists")
    drift = uncleared_drift(connection)
    if drift is not None:
        raise WriteRefused(409, "writes_blocked", drift_blocks_writes(connection.id, drift))
    blocked = login_blocked_reason(connection)
    if blocked is not None:  # signing in now would be refused again, or trip the portal's lockout
        raise WriteRefused(409, "connection_requires_action", f"the portal login needs attention: {blocked}")
    return connection


def _company_upstream(session: Session, company_id: str) -> str:
    company = session.get(models.Company, company_id)
    if company is None:
        raise WriteRefused(404, "not_found", f"no company {company_id}")
    return company.upstream_id


def _upstream_of(session: Session, model: Any, gateway_id: str | None) -> str | None:
    if gateway_id is None:
        return None
    row = session.get(model, gateway_id)
    return row.upstream_id if row is not None else None


def _default_account(session: Session, company_id: str, currency: str) -> models.BankAccount | None:
    """The company's account to pay from: verified, in the bill's currency, fewest approvals."""
    accounts = session.scalars(
        select(models.BankAccount).where(
            models.BankAccount.company_id == company_id,
            models.BankAccount.deleted_at.is_(None),
            models.BankAccount.status == "verified",
            models.BankAccount.kind == "bank",
        )
    ).all()
    ranked = sorted(accounts, key=lambda a: (a.currency != currency, a.approvals_required, a.name, a.id))
    return ranked[0] if ranked else None


def prepare_create_payment(session: Session, principal: Principal, body: dict[str, Any]) -> Intent:
    """Pay an approved bill; omitted fields default to the amount due, the vendor's method, the
    company's default account and the earliest date the portal allows."""
    bill = _visible(session, principal, "bill", body["bill_id"], "bill_id")
    _writable_connection(session, bill.connection_id)
    if bill.status in ("pending_approval", "draft", "rejected") or bill.approval_status in (
        "pending",
        "rejected",
    ):
        raise WriteRefused(422, "bill_not_approved", f"bill {bill.id} is {bill.status}; only approved bills are paid",
                           param="bill_id")  # fmt: skip
    if bill.status == "void":
        raise WriteRefused(422, "bill_void", f"bill {bill.id} is void", param="bill_id")
    if bill.amount_due_minor <= 0:
        raise WriteRefused(422, "nothing_due", f"bill {bill.id} has nothing left to pay", param="bill_id")
    amount_minor = bill.amount_due_minor
    if body.get("amount") is not None:
        try:
            amount_minor = to_minor(Decimal(str(body["amount"])), bill.currency)
        except ValueError as exc:
            raise WriteRefused(400, "invalid_request", str(exc), param="amount") from exc
        if amount_minor <= 0:
            raise WriteRefused(400, "invalid_request", "amount must be positive", param="amount")
        if amount_minor > bill.amount_due_minor:
            due = from_minor(bill.amount_due_minor, bill.currency)
            raise WriteRefused(422, "amount_exceeds_amount_due",
                               f"amount is more than the {due} {bill.currency} due on bill {bill.id}",
                               param="amount")  # fmt: skip
    if body.get("debit_bank_account_id"):
        account = _visible(
            session, principal, "bank_account", body["debit_bank_account_id"], "debit_bank_account_id"
        )
        if account.company_id != bill.company_id:
            raise WriteRefused(422, "bank_account_mismatch", "the account belongs to another company",
                               param="debit_bank_account_id")  # fmt: skip
        if account.status != "verified":
            raise WriteRefused(422, "bank_account_not_verified", f"bank account {account.id} is not verified",
                               param="debit_bank_account_id")  # fmt: skip
    else:
        account = _default_account(session, bill.company_id, bill.currency)
        if account is None:
            raise WriteRefused(422, "no_bank_account", "the company has no verified bank account to pay from")
    scheduled = body.get("scheduled_for")
    request = {
        "company_upstream_id": _company_upstream(session, bill.company_id),
        "bill_upstream_id": bill.upstream_id,
        "amount": str(from_minor(amount_minor, bill.currency)),
        "currency": bill.currency,
        "method": body.get("method"),
        "debit_bank_account_upstream_id": account.upstream_id,
        "scheduled_for": scheduled.isoformat() if isinstance(scheduled, date) else scheduled,
        "memo": body.get("memo"),
    }
    return Intent("create_payment", bill.connection_id, bill.company_id, request, "payment", bill.id, "bill")


def prepare_decision(session: Session, principal: Principal, approval_id: str, decision: str,
                     comment: str | None) -> Intent:  # fmt: skip
    """Approve or reject a bill or a payment (an approval id is the object's gateway id)."""
    object_type = "payment" if approval_id.startswith("pay") else "bill"
    row = _visible(session, principal, object_type, approval_id, "id")
    _writable_connection(session, row.connection_id)
    status = row.approval_status if object_type == "bill" else row.status
    waiting = status == "pending" if object_type == "bill" else status == "pending_approval"
    if not waiting:
        raise WriteRefused(409, "not_awaiting_approval", f"{object_type} {row.id} is not awaiting approval")
    if comment and object_type == "payment":  # it would be dropped without a word
        raise WriteRefused(400, "invalid_request", "the portal keeps no comment on a payment's approval; "
                           "send the decision without one", param="comment")  # fmt: skip
    request = {
        "company_upstream_id": _company_upstream(session, row.company_id),
        "object_upstream_id": row.upstream_id,
        "comment": comment,
    }
    return Intent(
        f"{decision}_{object_type}", row.connection_id, row.company_id, request, object_type, row.id
    )


def prepare_cancel_payment(session: Session, principal: Principal, payment_id: str) -> Intent:
    """Cancel a payment that has not been debited yet."""
    row = _visible(session, principal, "payment", payment_id, "id")
    _writable_connection(session, row.connection_id)
    if row.direction != "payable" or row.status not in ("pending_approval", "scheduled"):
        raise WriteRefused(409, "payment_not_cancellable", f"payment {row.id} is {row.status}; only payments not "
                           "yet debited can be cancelled")  # fmt: skip
    request = {
        "company_upstream_id": _company_upstream(session, row.company_id),
        "object_upstream_id": row.upstream_id,
    }
    return Intent("cancel_payment", row.connection_id, row.company_id, request, "payment", row.id)


def _lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: (str(v) if isinstance(v, Decimal) else v) for k, v in line.items() if v is not None}
        for line in lines
    ]


def prepare_create_bill(
    session: Session, principal: Principal, body: dict[str, Any], attachment: tuple[str, bytes, str] | None
) -> Intent:
    """A bill for a vendor; the portal routes it into the company's approval policy."""
    vendor = _visible(session, principal, "vendor", body["vendor_id"], "vendor_id")
    _writable_connection(session, vendor.connection_id)
    request: dict[str, Any] = {
        "company_upstream_id": _company_upstream(session, vendor.company_id),
        "vendor_upstream_id": vendor.upstream_id,
        "number": body["number"],
        "issue_date": str(body["issue_date"]),
        "due_date": str(body["due_date"]),
        "lines": _lines(body["lines"]),
        "currency": body.get("currency"),
        "memo": body.get("memo"),
    }
    if attachment is not None:
        name, content, content_type = attachment
        if len(content) > ATTACHMENT_MAX_BYTES:
            raise WriteRefused(413, "attachment_too_large", "attachments are limited to 10 MB", param="file")
        request["attachment"] = {"file_name": name, "content_type": content_type,
                                 "content_b64": base64.b64encode(content).decode()}  # fmt: skip
    return Intent("create_bill", vendor.connection_id, vendor.company_id, request, "bill", None)


def prepare_create_invoice(session: Session, principal: Principal, body: dict[str, Any]) -> Intent:
    """An invoice for a customer: send now, schedule or keep as draft; reminders; recurring."""
    customer = _visible(session, principal, "customer", body["customer_id"], "customer_id")
    _writable_connection(session, customer.connection_id)
    scheduled = body.get("send") == "scheduled"
    if scheduled != bool(body.get("scheduled_send_date")):  # a date dropped from an invoice sent now, or none
        why = "a scheduled send needs" if scheduled else "only a scheduled send (send=scheduled) takes"
        raise WriteRefused(400, "invalid_request", f"{why} scheduled_send_date", param="scheduled_send_date")
    request = {
        "company_upstream_id": _company_upstream(session, customer.company_id),
        "customer_upstream_id": customer.upstream_id,
        **{k: (str(v) if isinstance(v, date) else v) for k, v in body.items()
           if k not in ("customer_id", "lines", "accounting_sync")},
        "lines": _lines(body["lines"]),
    }  # fmt: skip
    return Intent("create_invoice", customer.connection_id, customer.company_id, request, "invoice", None)


def prepare_remind(session: Session, principal: Principal, invoice_id: str) -> Intent:
    """Send a manual reminder for an open invoice."""
    row = _visible(session, principal, "invoice", invoice_id, "id")
    _writable_connection(session, row.connection_id)
    if row.status in ("draft", "paid", "void"):
        raise WriteRefused(
            409, "invoice_not_open", f"invoice {row.id} is {row.status}; reminders go for open invoices"
        )
    request = {
        "company_upstream_id": _company_upstream(session, row.company_id),
        "object_upstream_id": row.upstream_id,
    }
    return Intent("send_reminder", row.connection_id, row.company_id, request, "invoice", row.id)


# --- recording the intent -----------------------------------------------------------------------


def record_intent(
    sessions: Any,
    principal: Principal,
    intent: Intent,
    *,
    idempotency_record: int | None,
    request_id: str | None,
) -> models.Operation:
    """Commit the operation (with its unique reference) before anything is sent."""
    with transaction(sessions) as session:
        operation_id = new_id("op")
        now = utcnow()
        operation = models.Operation(
            id=operation_id, connection_id=intent.connection_id, company_id=intent.company_id, kind=intent.kind,
            status="pending", request={**intent.request, "object_type": intent.object_type,
                                       "object_id": intent.object_id, "object_id_type": intent.object_id_type},
            reference=f"papi-{operation_id}", attempts=0, created_by=principal.token_id,
            created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(operation)
        if idempotency_record is not None:
            idempotency.attach_operation(session, idempotency_record, operation_id)
        audit.append(session, actor=principal.token_id, action=f"{intent.kind}.requested",
                     object_type=intent.object_id_type or intent.object_type, object_id=intent.object_id,
                     company_id=intent.company_id,
                     connection_id=intent.connection_id, request_id=request_id,
                     detail={"operation_id": operation_id, "reference": operation.reference,
                             "request": _audit_request(intent.request)})  # fmt: skip
        return operation


def _audit_request(request: dict[str, Any]) -> dict[str, Any]:
    # The attachment's bytes stay out of the log; its name and size are enough evidence.
    out = dict(request)
    if isinstance(out.get("attachment"), dict):
        attached = out["attachment"]
        out["attachment"] = {
            "file_name": attached["file_name"],
            "size": len(attached["content_b64"]) * 3 // 4,
        }
    return out


# --- executing ----------------------------------------------------------------------------------

Send = Callable[[PortalSession, models.Operation], Awaitable[WriteResult]]
Find = Callable[[PortalSession, models.Operation], Awaitable[WriteResult | None]]
# Whether the object read after "done already" shows this write's effect (given the signed-in user).
Shows = Callable[[UpstreamRecord, UpstreamRef], bool]


@dataclass(frozen=True)
class WriteKind:
    """How one kind of write is sent, and found again after an unknown outcome."""

    send: Send
    find: Find | None  # None: the portal refuses to repeat it, so sending again is safe
    refetch: tuple[str, str] | None = None  # (object type, request key) to read after "done already"
    shows: Shows | None = None  # with refetch: the object as this write leaves it
    success_event: str | None = None


def _decided(decision: str) -> Shows:
    """An approval step of the signed-in user's with `decision`."""

    def shows(record: UpstreamRecord, me: UpstreamRef) -> bool:
        steps = (record.fields.get("approval") or {}).get("steps") or []
        return any(step.get("approver_id") == me and step.get("decision") == decision for step in steps)

    return shows


def _cancelled(record: UpstreamRecord, me: UpstreamRef) -> bool:
    return record.status_raw == PAYMENT_CANCELLED  # this write's effect, not a rejection's


def _req(op: models.Operation) -> dict[str, Any]:
    return op.request


async def _after_write(step: Awaitable[_T]) -> _T:
    """`step`, a read (or an upload) that follows a write the portal has applied. A portal that cannot
    be reached for it leaves the write's outcome to the read-back: it must not count as "nothing was
    sent", which would send the write again without looking."""
    try:
        return await step
    except UpstreamUnavailable as exc:
        raise AmbiguousWriteOutcome(f"the write was applied, what follows it failed: {exc}", settled=True,
                                    status_code=exc.status_code) from exc  # fmt: skip
    except UpstreamError as exc:
        # What this step did not apply (an upload refused before it was handled, a session lost
        # again) says nothing of the write before it, which the portal did apply.
        exc.nothing_applied = False
        raise


async def _send_payment(portal: PortalSession, op: models.Operation) -> WriteResult:
    r = _req(op)
    return await portal.create_payment(
        r["company_upstream_id"], bill_upstream_id=r["bill_upstream_id"], amount=Decimal(r["amount"]),
        payment_method=r.get("method"), debit_bank_account_upstream_id=r["debit_bank_account_upstream_id"],
        requested_debit_date=date.fromisoformat(r["scheduled_for"]) if r.get("scheduled_for") else None,
        external_reference=op.reference, memo=r.get("memo"),
    )  # fmt: skip


async def _find_payment(portal: PortalSession, op: models.Operation) -> WriteResult | None:
    found = await portal.find_payments_by_reference(_req(op)["company_upstream_id"], op.reference)
    if len(found) > 1:  # never expected: it would mean a second payment was made
        log.error("write.duplicate_payments", operation=op.id, count=len(found))
    return found[0] if found else None


def _since(op: models.Operation) -> datetime:
    stamp = _req(op).get("portal_time_before")
    return datetime.fromisoformat(stamp) if stamp else datetime(2000, 1, 1)


async def _send_bill(portal: PortalSession, op: models.Operation) -> WriteResult:
    r = _req(op)
    if op.upstream_id is None:
        result = await portal.create_bill(
            r["company_upstream_id"], vendor_upstream_id=r["vendor_upstream_id"], number=r["number"],
            issue_date=date.fromisoformat(r["issue_date"]), due_date=date.fromisoformat(r["due_date"]),
            lines=r["lines"], currency=r.get("currency"), memo=r.get("memo"), reference=op.reference,
        )  # fmt: skip
        op.upstream_id = result.portal_id
    return await _after_write(_attach(portal, op))


async def _attach(portal: PortalSession, op: models.Operation) -> WriteResult:
    """Upload the bill's attachment unless the bill already carries it; returns the bill as it is."""
    r = _req(op)
    company, bill_id = r["company_upstream_id"], op.upstream_id
    assert bill_id is not None
    attachment = r.get("attachment")
    if attachment:
        bill = await portal.fetch_object(company, "bill", bill_id)
        names = [a.get("file_name") for a in (bill.fields.get("attachments") or [])] if bill else []
        if attachment["file_name"] not in names:
            await portal.upload_bill_attachment(
                company, bill_id, file_name=attachment["file_name"],
                content=base64.b64decode(attachment["content_b64"]), content_type=attachment["content_type"],
            )  # fmt: skip
    record = await portal.fetch_object(company, "bill", bill_id)
    return WriteResult([record] if record else [], bill_id, None, None)


async def _find_bill(portal: PortalSession, op: models.Operation) -> WriteResult | None:
    if op.upstream_id is None:
        found = await portal.find_by_memo_reference(
            _req(op)["company_upstream_id"], "bill", op.reference, modified_since=_since(op)
        )
        if found is None:
            return None
        op.upstream_id = found.portal_id
    return await _attach(portal, op)


async def _send_invoice(portal: PortalSession, op: models.Operation) -> WriteResult:
    r = _req(op)
    company = r["company_upstream_id"]

    def day(key: str) -> date | None:
        return date.fromisoformat(r[key]) if r.get(key) else None

    result = await portal.create_invoice(
        company, customer_upstream_id=r["customer_upstream_id"], number=r.get("number"),
        issue_date=day("issue_date"), terms=r.get("terms"), due_date=day("due_date"), lines=r["lines"],
        memo=r.get("memo"), reference=op.reference, send=r.get("send") or "now",
        scheduled_send_date=day("scheduled_send_date"), reminders=r.get("reminders"), recurring=r.get("recurring"),
    )  # fmt: skip
    return await _after_write(_with_invoice_parts(portal, company, result))


async def _with_invoice_parts(portal: PortalSession, company: str, result: WriteResult) -> WriteResult:
    """A new invoice with what the portal made along with it: its recurring schedule, its reminders."""
    return await _with_reminders(portal, company, await _with_recurring(portal, company, result))


async def _with_recurring(portal: PortalSession, company: str, result: WriteResult) -> WriteResult:
    """An invoice made with a recurring schedule: the schedule's record too, so the link resolves."""
    plan_id = result.raw.get("recurringInvoiceId") if isinstance(result.raw, dict) else None
    if plan_id:
        plan = await portal.fetch_object(company, "recurring_invoice", plan_id)
        if plan is not None:
            result.records.append(plan)
    return result


async def _with_reminders(portal: PortalSession, company: str, result: WriteResult) -> WriteResult:
    """A new invoice with the reminders the portal scheduled for it (the reminders feed brings them
    only at the next sync), so that the stored invoice and its `invoice.created` event carry them.
    The invoice is made whatever this read gives: one that fails leaves them to that sync."""
    invoice = result.record
    if invoice is None or invoice.object_type != "invoice":
        return result
    try:
        listed = await portal.list_reminders(company, invoice.upstream_id)
    except UpstreamChanged:
        raise
    except UpstreamError as exc:
        log.warning("write.reminders_unread", invoice=invoice.upstream_id, error=type(exc).__name__)
        return result
    # Each reminder as an item of the invoice's list, as the sync merges it (upsert._apply_parts).
    part = mapping.PARTS["invoice_reminder"]
    item = mapping.object_map_for(part.parent_type).children[part.field].schema
    items = [
        item.model_validate({k: v for k, v in record.fields.items() if k != part.parent_key}).model_dump(
            mode="json"
        )
        for raw in listed
        for record in portal.reminder_records(company, raw)
    ]
    invoice.fields[part.field] = sorted(items, key=part.order)
    return result


async def _find_invoice(portal: PortalSession, op: models.Operation) -> WriteResult | None:
    company = _req(op)["company_upstream_id"]
    found = await portal.find_by_memo_reference(company, "invoice", op.reference, modified_since=_since(op))
    return await _with_invoice_parts(portal, company, found) if found is not None else None


def _action(name: str) -> Send:
    async def send(portal: PortalSession, op: models.Operation) -> WriteResult:
        r = _req(op)
        company, target = r["company_upstream_id"], r["object_upstream_id"]
        if name in ("approve_bill", "reject_bill"):
            method = portal.approve_bill if name == "approve_bill" else portal.reject_bill
            return await method(company, target, comment=r.get("comment"))
        actions = {"approve_payment": portal.approve_payment, "reject_payment": portal.reject_payment,
                   "cancel_payment": portal.cancel_payment}  # fmt: skip
        return await actions[name](company, target)

    return send


async def _send_reminder(portal: PortalSession, op: models.Operation) -> WriteResult:
    r = _req(op)
    sent = await portal.send_reminder(r["company_upstream_id"], r["object_upstream_id"])
    record = await _after_write(
        portal.fetch_object(r["company_upstream_id"], "invoice", r["object_upstream_id"])
    )
    # The invoice first (the operation's object), then the reminder, which joins its list.
    records = [record, *sent.records] if record else []
    return WriteResult(records, sent.portal_id, sent.http_status, sent.trace_id, sent.raw)


async def _find_reminder(portal: PortalSession, op: models.Operation) -> WriteResult | None:
    r = _req(op)
    reminders = await portal.list_reminders(r["company_upstream_id"], r["object_upstream_id"])
    manual = [x for x in reminders if x.get("kind") == "Manual"]
    if len(manual) <= int(r.get("manual_reminders_before", 0)):
        return None
    record = await portal.fetch_object(r["company_upstream_id"], "invoice", r["object_upstream_id"])
    # As _send_reminder: the invoice, then the reminder, which joins its list.
    records = [record, *portal.reminder_records(r["company_upstream_id"], manual[-1])] if record else []
    return WriteResult(records, manual[-1].get("reminderId"), None, None, manual[-1])


KINDS: dict[str, WriteKind] = {
    "create_payment": WriteKind(_send_payment, _find_payment),
    "create_bill": WriteKind(_send_bill, _find_bill),
    "create_invoice": WriteKind(_send_invoice, _find_invoice),
    "approve_bill": WriteKind(
        _action("approve_bill"), None, ("bill", "object_upstream_id"), _decided("approved")
    ),
    "reject_bill": WriteKind(
        _action("reject_bill"), None, ("bill", "object_upstream_id"), _decided("rejected")
    ),
    "approve_payment": WriteKind(
        _action("approve_payment"), None, ("payment", "object_upstream_id"), _decided("approved")
    ),
    "reject_payment": WriteKind(
        _action("reject_payment"), None, ("payment", "object_upstream_id"), _decided("rejected")
    ),
    "cancel_payment": WriteKind(
        _action("cancel_payment"), None, ("payment", "object_upstream_id"), _cancelled
    ),
    "send_reminder": WriteKind(_send_reminder, _find_reminder),
}


def _load(ctx: JobContext, operation_id: str) -> models.Operation | None:
    with ctx.sessions() as session:
        return session.get(models.Operation, operation_id)


def _save(ctx: JobContext, op: models.Operation, **changes: Any) -> models.Operation:
    with transaction(ctx.sessions) as session:
        row = session.get(models.Operation, op.id)
        assert row is not None
        for key, value in changes.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        return row


def _record_send(ctx: JobContext, op: models.Operation) -> tuple[models.Operation | None, bool]:
    """Record a send (attempts, started_at) before it goes out: (the operation, whether to send).
    None if it ended meanwhile (expired, or finished elsewhere): an operation answered as ended is
    never sent. Not to send when another process sent it since this one loaded it (two gateways on
    one database, one recovering what the other carries): it is read back first."""
    with transaction(ctx.sessions) as session:
        row = session.get(models.Operation, op.id, with_for_update=True)
        assert row is not None
        if row.status in TERMINAL:
            return None, False
        if row.attempts != op.attempts:
            return row, False
        row.status = "running"
        row.attempts = op.attempts + 1
        row.started_at = utcnow()
        row.upstream_id = op.upstream_id
        row.updated_at = utcnow()
        return row, True


def _aware(value: datetime | None) -> datetime | None:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _stamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


TRANSIENT_RETRIES = 4
# Operations this process is carrying now: one is never executed twice at once (the request that
# recorded it, the startup recovery and the periodic retry may all reach for it).
_IN_HAND: set[str] = set()


async def execute(ctx: JobContext, operation_id: str) -> str:
    """Carry an operation to a final state; safe to run again at any point (recovery does).

    A portal that cannot be reached (or keeps rate-limiting) is tried again a few times at once;
    after that the operation stays open with the time it is to be tried again, when the periodic
    retry (`retry_due`) takes it up. Returns the operation's status.
    """
    if operation_id in _IN_HAND:
        op = _load(ctx, operation_id)
        return op.status if op is not None else "missing"
    _IN_HAND.add(operation_id)
    try:
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return await _execute_once(ctx, operation_id)
            except (UpstreamUnavailable, RateLimited) as exc:
                if attempt == TRANSIENT_RETRIES - 1:
                    status = _retry_later(ctx, operation_id)
                    log.warning("write.retry_later", operation=operation_id, error=str(exc))
                    return status
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover
    except Exception:
        _retry_later(ctx, operation_id)  # a failure of our own is retried too, rather than stuck
        raise
    finally:
        _IN_HAND.discard(operation_id)


# --- taking up again what a portal outage left open, and giving up on it -----------------------


def retry_delay(ctx: JobContext, op: models.Operation, now: datetime) -> timedelta:
    """How long an operation left open waits before it is tried again: a quarter of its age (tries thin
    out as an outage lasts), at least `write_retry_seconds`, at most 5 minutes, with some jitter so
    that the writes one outage left open do not all come back at once."""
    age = (now - (_aware(op.created_at) or now)).total_seconds()
    seconds = min(RETRY_DELAY_MAX_SECONDS, age / 4) * random.uniform(0.8, 1.0)
    return timedelta(seconds=max(ctx.settings.write_retry_seconds, seconds))


def _expires_at(ctx: JobContext, op: models.Operation) -> datetime:
    """After this an operation is not sent any more (it was requested too long ago)."""
    created = _aware(op.created_at)
    assert created is not None
    return created + timedelta(seconds=ctx.settings.write_expire_seconds)


def _retry_later(ctx: JobContext, operation_id: str) -> str:
    """Note on an operation left open when it is to be tried again, and until when it may be sent;
    returns its status."""
    now = utcnow()
    with transaction(ctx.sessions) as session:
        row = session.get(models.Operation, operation_id, with_for_update=True)
        if row is None:
            return "missing"
        if row.status in TERMINAL:
            return row.status
        expires = _expires_at(ctx, row)
        retry_at = now + retry_delay(ctx, row, now)
        if now < expires < retry_at:
            retry_at = expires  # expired at once rather than up to one delay late
        row.error = {**(row.error or {}), "retryable": True, "retry_at": _stamp(retry_at),
                     "expires_at": _stamp(expires)}  # fmt: skip
        row.updated_at = now
        return row.status


def _abandoned_after(ctx: JobContext) -> timedelta:
    """An open operation with no retry time whose row has not changed for this long has lost whoever
    carried it (a process killed, a task cancelled): longer than any one execution stays quiet."""
    settings = ctx.settings
    return timedelta(seconds=max(900.0, 2 * (settings.write_timeout_seconds + settings.write_settle_seconds)))


def _due(row: models.Operation, now: datetime, abandoned: timedelta) -> bool:
    retry_at = (row.error or {}).get("retry_at")
    if retry_at is not None:
        return datetime.fromisoformat(retry_at) <= now
    updated = _aware(row.updated_at)
    return updated is not None and updated <= now - abandoned


def _claim(ctx: JobContext, operation_id: str, now: datetime, abandoned: timedelta) -> bool:
    """Take a due operation for this run: its retry time is cleared, so no other run (of this process
    or another) takes it as well; the execution sets a new one if it leaves the operation open."""
    with transaction(ctx.sessions) as session:
        row = session.get(models.Operation, operation_id, with_for_update=True)
        if row is None or row.status not in UNFINISHED_WRITES or not _due(row, now, abandoned):
            return False
        row.error = {k: v for k, v in (row.error or {}).items() if k != "retry_at"}
        row.updated_at = now
        return True


async def retry_due(ctx: JobContext) -> dict[str, str]:
    """Take up again the open operations whose retry time has come (a portal outage left them open)
    and those nobody carries any more; each is read back before anything is sent again, as always.
    Returns their statuses by id."""
    now, abandoned = utcnow(), _abandoned_after(ctx)
    with ctx.sessions() as session:
        rows = session.scalars(
            select(models.Operation)
            .where(models.Operation.status.in_(UNFINISHED_WRITES))
            .order_by(models.Operation.created_at)
        ).all()
        due = [row.id for row in rows if row.id not in _IN_HAND and _due(row, now, abandoned)]
    ids = [operation_id for operation_id in due if _claim(ctx, operation_id, now, abandoned)]
    if ids:
        log.info("writes.retrying", operations=len(ids))
    results = await asyncio.gather(*(execute(ctx, i) for i in ids), return_exceptions=True)
    return {
        i: (r if isinstance(r, str) else f"error: {type(r).__name__}")
        for i, r in zip(ids, results, strict=True)
    }


def _expire(ctx: JobContext, op: models.Operation) -> str:
    """End an operation that could not be carried out in time. Once a caller is told so, the write is
    never sent: `_record_send` refuses an ended operation. Never sent: its keys are released, so the
    same request is carried out afresh."""
    span = _span(ctx.settings.write_expire_seconds)
    if op.attempts == 0:
        message = (f"the portal could not be reached for {span} after the write was requested; nothing was "
                   "sent, and it will not be")  # fmt: skip
    else:
        message = (f"the portal showed no sign of the write {span} after it was requested; it will not be "
                   "sent again")  # fmt: skip
    log.warning("write.expired", operation=op.id, kind=op.kind, attempts=op.attempts)
    return _finish_failed(ctx, op, 503, "write_expired", message, keep_key=op.attempts > 0)


def _span(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} minutes" if minutes > 1 else f"{round(seconds)} seconds"


async def _effect_shown(
    portal: PortalSession, op: models.Operation, kind: WriteKind, trace_id: str | None
) -> WriteResult | None:
    """For a write the portal refuses to repeat: its object, if it shows this write's effect."""
    if kind.refetch is None:
        return None
    company = op.request["company_upstream_id"]
    record = await portal.fetch_object(company, kind.refetch[0], op.request[kind.refetch[1]])
    if record is None or (
        kind.shows is not None and not kind.shows(record, await portal.own_user_ref(company))
    ):
        return None
    return WriteResult([record], op.request[kind.refetch[1]], None, trace_id)


async def _execute_once(ctx: JobContext, operation_id: str) -> str:
    op = _load(ctx, operation_id)
    if op is None or op.status in TERMINAL:
        return op.status if op is not None else "missing"
    if op.attempts == 0 and utcnow() >= _expires_at(ctx, op):  # never sent: the portal need not be asked
        return _expire(ctx, op)
    kind = KINDS[op.kind]
    with ctx.sessions() as session:
        connection = session.get(models.Connection, op.connection_id)
        drift = None if connection is None else uncleared_drift(connection)
        if connection is not None and drift is not None:
            return _finish_failed(ctx, op, 409, "writes_blocked", drift_blocks_writes(connection.id, drift),
                                  keep_key=op.attempts > 0)  # fmt: skip
    portal = await ctx.portals.get(op.connection_id)
    portal.write_timeout = ctx.settings.write_timeout_seconds
    settle = timedelta(seconds=ctx.settings.write_settle_seconds)
    settled = False  # after a restart nothing is known about the last send: assume it may still land
    try:
        await portal.ensure_logged_in()
        if op.attempts == 0 and op.kind in ("create_bill", "create_invoice", "send_reminder"):
            op = _save(ctx, op, request=await _before_first_send(portal, op))
        polls = 0  # read-backs since the last send
        refused = 0  # sends the portal refused with an error of its own, applying nothing
        while True:
            sending = False
            try:
                if op.attempts > 0:
                    found = await kind.find(portal, op) if kind.find is not None else None
                    if found is not None:
                        return await _succeed(ctx, portal, op, found, read_back=True)
                    started = _aware(op.started_at) or utcnow()
                    log.debug("write.read_back_not_found", operation=op.id, settled=settled)
                    if kind.find is not None and not settled and utcnow() < started + settle:
                        # An earlier send may still be applied: look again (less often as the wait
                        # goes on, each look costs the portal's rate budget), do not send.
                        await asyncio.sleep(
                            min(READ_BACK_POLL_MAX_SECONDS, READ_BACK_POLL_SECONDS * 1.5**polls)
                        )
                        polls += 1
                        continue
                    if op.attempts >= MAX_SENDS:
                        return _not_confirmed(ctx, op)
                    if settled:
                        # The portal answered that it applied nothing (an error of its own): a
                        # moment's outage must not use up every send, so wait before the next.
                        await asyncio.sleep(resend_delay(op.attempts))
                if utcnow() >= _expires_at(ctx, op):
                    # Too late to send: sent before, it is done only if the portal shows it.
                    shown = await _effect_shown(portal, op, kind, None) if op.attempts > 0 else None
                    if shown is not None:
                        return await _succeed(ctx, portal, op, shown, read_back=True)
                    return _expire(ctx, op)
                # The send is recorded (attempts, started_at) before it goes out.
                recorded, may_send = _record_send(ctx, op)
                if recorded is None:
                    ended = _load(ctx, op.id)
                    return ended.status if ended is not None else "missing"
                if not may_send:  # sent elsewhere meanwhile: read back, and wait for it to land
                    op, polls, settled = recorded, 0, False
                    continue
                op, polls, sending = recorded, 0, True
                result = await kind.send(portal, op)
            except AmbiguousWriteOutcome as exc:
                if sending and exc.refused:
                    refused += 1
                    if refused >= REFUSALS_BEFORE_RETRY:
                        # The portal answered an error of its own each time (it applied nothing): an
                        # outage, not a write of unknown outcome. Those sends are taken back, and the
                        # write waits for the periodic retry rather than spending every send now.
                        op = _save(ctx, op, attempts=op.attempts - refused)
                        raise UpstreamUnavailable(
                            f"the portal refused the write {refused} times with an error of its own ({exc})",
                            status_code=exc.status_code,
                        ) from exc
                settled = exc.settled
                log.warning("write.ambiguous", operation=op.id, kind=op.kind, settled=exc.settled,
                            status=exc.status_code, trace_id=exc.trace_id)  # fmt: skip
                # A read-back may write too (a bill's attachment uploaded again): that counts as a send.
                op = _save(ctx, op, error={"last_ambiguous": str(exc), "http_status": exc.status_code,
                                           "trace_id": exc.trace_id}, upstream_id=op.upstream_id,
                           **({} if sending else {"attempts": op.attempts + 1, "started_at": utcnow()}))  # fmt: skip
                if not sending and op.attempts >= MAX_SENDS:
                    return _not_confirmed(ctx, op)
                continue
            except (UpstreamUnavailable, RateLimited, AuthenticationError) as exc:
                # Never left, or refused before the portal could apply it (429s, a sign-in again
                # after its 401): nothing applied, the count stays honest.
                if sending and (exc.nothing_applied or getattr(exc, "status_code", 0) is None):
                    op = _save(ctx, op, attempts=op.attempts - 1)
                raise
            except PortalRuleViolation as exc:
                if exc.code in _DECIDED_ALREADY and op.attempts > 1:
                    # Done already: by our earlier (unanswered) send only if the object shows it. A
                    # payment debited meanwhile, or decided by someone else, is this send's refusal.
                    shown = await _effect_shown(portal, op, kind, exc.trace_id)
                    if shown is not None:
                        return await _succeed(ctx, portal, op, shown, read_back=True)
                status, code = PORTAL_CODES.get(exc.code, (422, "portal_rule_violation"))
                param = request_field(
                    op.request.get("object_type") or "", exc.field
                )  # the caller's name for it
                return _finish_failed(ctx, op, status, code, exc.message, portal_code=exc.code,
                                      http_status=exc.status_code, trace_id=exc.trace_id, param=param)  # fmt: skip
            return await _succeed(ctx, portal, op, result, read_back=False)
    except PermissionDenied as exc:
        return _finish_failed(
            ctx, op, 403, "portal_permission_denied", str(exc), portal_code="PermissionDenied"
        )
    except NotFound as exc:
        return _finish_failed(ctx, op, 404, "not_found_upstream", str(exc), portal_code=exc.code)
    except UpstreamChanged as exc:
        mark_upstream_changed(ctx.sessions, op.connection_id, exc.differences)
        return _finish_failed(ctx, op, 502, "upstream_changed", str(exc), status="requires_action")
    except SessionExpired as exc:
        # The portal's session lost again right after signing in (revoked, challenged again): the
        # login works and nothing needs a person, so, as after an outage, the operation stays open
        # and is tried again (its send taken back if the portal refused it unapplied, see above).
        _save(ctx, op, status="pending" if op.attempts == 0 else "running",
              error={"last_error": str(exc), "retryable": True})  # fmt: skip
        raise UpstreamUnavailable(f"the portal session was lost: {exc}") from exc
    except AuthenticationError as exc:
        # Before the first send (the usual case: signing in failed), nothing reached the portal, so the
        # key is released: the same request goes through once the login is repaired. The refusal
        # puts the connection in the state it calls for, so nothing signs in again by itself.
        record_login_failure_of(ctx.sessions, op.connection_id, exc)
        return _finish_failed(ctx, op, 409, "connection_requires_action", str(exc) or type(exc).__name__,
                              status="requires_action", keep_key=op.attempts > 0)  # fmt: skip
    except (UpstreamUnavailable, RateLimited) as exc:
        # Not applied (or not known to be): the operation stays open; recovery takes it up again.
        _save(ctx, op, status="pending" if op.attempts == 0 else "running",
              error={"last_error": str(exc), "retryable": True})  # fmt: skip
        raise


def resend_delay(sends: int) -> float:
    """Seconds to wait before send number `sends + 1` after the portal said the last one applied
    nothing: 0.5, 1, 2, 4 s, with jitter (5 sends then span about 7 s rather than a fifth of one)."""
    return min(RESEND_DELAY_MAX_SECONDS, 0.5 * 2 ** (sends - 1)) * random.uniform(0.75, 1.0)


def _not_confirmed(ctx: JobContext, op: models.Operation) -> str:
    return _finish_failed(ctx, op, 502, "write_not_confirmed",
                          f"the portal did not confirm the write after {op.attempts} attempts",
                          status="requires_action")  # fmt: skip


# What a payment settles: its bills' and invoices' balances and statuses change with it in the portal.
_SETTLED_BY_PAYMENT = ("bill", "invoice")


async def _succeed(ctx: JobContext, portal: PortalSession, op: models.Operation, result: WriteResult, *,
                   read_back: bool) -> str:  # fmt: skip
    """Finish a write the portal did, with fresh reads of what it changed besides its own object."""
    return _finish_succeeded(
        ctx, op, await _with_settled_objects(ctx, portal, op, result), read_back=read_back
    )


async def _with_settled_objects(
    ctx: JobContext, portal: PortalSession, op: models.Operation, result: WriteResult
) -> WriteResult:
    """`result` with the bills and invoices a payment write changed read again from the portal, so the
    store shows them as the portal does now (a paid bill's amount due, a cancelled payment's bill open
    again) rather than until the next sync. The write is done whatever these reads give: one that
    fails is left to that sync, and one in a changed shape marks the connection as any read does."""
    payment = result.record
    if payment is None or payment.object_type != "payment":
        return result
    refs = references(payment)
    fresh = []
    for object_type in _SETTLED_BY_PAYMENT:
        for upstream_id in sorted(refs.get(object_type, ())):
            try:
                record = await portal.fetch_object(payment.company_upstream_id, object_type, upstream_id)
            except UpstreamChanged as exc:
                mark_upstream_changed(ctx.sessions, op.connection_id, exc.differences)
                continue
            except UpstreamError as exc:
                log.warning("write.refresh_failed", operation=op.id, object_type=object_type,
                            error=type(exc).__name__)  # fmt: skip
                continue
            if record is not None:
                fresh.append(record)
    return replace(result, records=[*result.records, *fresh]) if fresh else result


async def _before_first_send(portal: PortalSession, op: models.Operation) -> dict[str, Any]:
    """What the read-back will compare with, noted before the first send."""
    request = dict(op.request)
    request["portal_time_before"] = (portal.portal_now() - timedelta(minutes=5)).isoformat()
    if op.kind == "send_reminder":
        reminders = await portal.list_reminders(request["company_upstream_id"], request["object_upstream_id"])
        request["manual_reminders_before"] = sum(1 for r in reminders if r.get("kind") == "Manual")
    return request


def _company_ids(session: Session, connection_id: str) -> dict[str, str]:
    rows = session.execute(
        select(models.Company.upstream_id, models.Company.id).where(
            models.Company.connection_id == connection_id
        )
    )
    return {upstream: gateway for upstream, gateway in rows}


def _evidence(result: WriteResult | None, **extra: Any) -> dict[str, Any]:
    evidence = {"portal_id": result.portal_id if result else None,
                "http_status": result.http_status if result else None,
                "trace_id": result.trace_id if result else None}  # fmt: skip
    evidence.update({k: v for k, v in extra.items() if v is not None})
    return evidence


def _finish_succeeded(ctx: JobContext, op: models.Operation, result: WriteResult, *, read_back: bool) -> str:
    now = utcnow()
    with transaction(ctx.sessions) as session:
        row = session.get(models.Operation, op.id, with_for_update=True)
        assert row is not None
        if row.status in TERMINAL:
            return row.status
        object_json: dict[str, Any] | None = None
        object_id = row.request.get("object_id")
        audited_type = _audited_type(row)
        record = result.record
        if result.records:
            from plooto_api.sync.upsert import apply_records

            apply_records(
                session, row.connection_id, _company_ids(session, row.connection_id), result.records, now
            )
        if record is not None:
            model: Any = mapping.object_map_for(record.object_type).model
            stored = session.scalars(
                select(model).where(
                    model.connection_id == row.connection_id, model.upstream_id == record.upstream_id
                )
            ).first()
            if stored is not None:
                object_json = mapping.to_schema(stored).model_dump(mode="json")
                object_id, audited_type = stored.id, row.request.get("object_type")
        body = {"object_type": row.request.get("object_type"), "object_id": object_id, "object": object_json}
        if row.kind == "send_reminder" and isinstance(result.raw, dict):
            body["reminder"] = {"id": result.raw.get("reminderId"), "sent_at": result.raw.get("sentAt")}
        row.status = "succeeded"
        row.result = body
        row.error = None
        row.upstream_id = result.portal_id or row.upstream_id
        row.finished_at = now
        row.updated_at = now
        audit.append(session, actor=row.created_by or "system", action=f"{row.kind}.succeeded",
                     object_type=audited_type, object_id=object_id, company_id=row.company_id,
                     connection_id=row.connection_id,
                     detail={"operation_id": row.id, "reference": row.reference, "attempts": row.attempts,
                             "read_back": read_back},
                     upstream_evidence=_evidence(result))  # fmt: skip
        status_code = 201 if row.kind.startswith("create_") else 200
        idempotency.complete_for_operation(session, row.id, status_code, response_body(row))
    return "succeeded"


def _audited_type(row: models.Operation) -> str | None:
    """The type of the object the operation names in its request (a payment's bill)."""
    return row.request.get("object_id_type") or row.request.get("object_type")


def _finish_failed(
    ctx: JobContext,
    op: models.Operation,
    http: int,
    code: str,
    message: str,
    *,
    status: str = "failed",
    portal_code: str | None = None,
    http_status: int | None = None,
    trace_id: str | None = None,
    param: str | None = None,
    keep_key: bool = True,
) -> str:
    """End `op` unsuccessfully. Its idempotency keys replay this answer, unless `keep_key` is false
    (refused before anything was sent): then they are released."""
    now = utcnow()
    with transaction(ctx.sessions) as session:
        row = session.get(models.Operation, op.id, with_for_update=True)
        assert row is not None
        if row.status in TERMINAL:
            return row.status
        row.status = status
        row.error = {
            "status": http,
            "code": code,
            "message": message,
            "param": param,
            "portal_code": portal_code,
        }
        row.finished_at = now
        row.updated_at = now
        audit.append(session, actor=row.created_by or "system", action=f"{row.kind}.{status}",
                     object_type=_audited_type(row), object_id=row.request.get("object_id"),
                     company_id=row.company_id, connection_id=row.connection_id,
                     detail={"operation_id": row.id, "reference": row.reference, "attempts": row.attempts,
                             "error": row.error},
                     upstream_evidence={"http_status": http_status, "trace_id": trace_id,
                                        "portal_code": portal_code})  # fmt: skip
        if keep_key:
            idempotency.complete_for_operation(session, row.id, *error_response(row))
        else:
            idempotency.release_for_operation(session, row.id)
    return status


def operation_json(row: models.Operation) -> dict[str, Any]:
    """The operation as its API object."""
    return mapping.operation_to_schema(row).model_dump(mode="json")


def response_body(row: models.Operation) -> dict[str, Any]:
    """What a finished write answers: the object it made or changed (or the operation)."""
    result = row.result or {}
    return result.get("object") or operation_json(row)


def error_response(row: models.Operation) -> tuple[int, dict[str, Any]]:
    """A failed operation as the API error it answers with."""
    error = row.error or {}
    body = {"error": {"code": error.get("code", "write_failed"), "message": error.get("message", "the write failed"),
                      "param": error.get("param"), "request_id": None, "operation_id": row.id}}  # fmt: skip
    return int(error.get("status", 422)), body


def unfinished(ctx: JobContext) -> list[str]:
    """Operations a previous process left pending or running."""
    with ctx.sessions() as session:
        return list(
            session.scalars(
                select(models.Operation.id)
                .where(models.Operation.status.in_(UNFINISHED_WRITES))
                .order_by(models.Operation.created_at)
            )
        )


def get_operation(session: Session, principal: Principal, operation_id: str) -> models.Operation | None:
    """An operation the caller may see (its company is in the token's scope)."""
    row = session.get(models.Operation, operation_id)
    if row is None:
        return None
    if (
        principal.access.connection_ids is not None
        and row.connection_id not in principal.access.connection_ids
    ):
        return None
    if row.company_id is not None and not principal.access.allows_company(row.company_id):
        return None
    return row
