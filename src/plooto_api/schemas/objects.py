"""The normalized objects mirrored from the portal (DESIGN §3), as the API serves them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field

from plooto_api.schemas.common import Money, PortalObject, Schema

BillStatus = Literal[
    "draft", "pending_approval", "approved", "scheduled", "partially_paid", "paid", "rejected", "void"
]
# `cancelled`: the object was cancelled (or deleted) in the portal before its approval completed.
ApprovalStatus = Literal["not_required", "pending", "approved", "rejected", "cancelled"]
# An approval step's decision. `skipped`: its approver never decided and no longer will (another
# approver on the level decided, or the chain ended before the step's turn).
Decision = Literal["pending", "approved", "rejected", "skipped"]
PaymentStatus = Literal[
    "pending_approval", "scheduled", "processing", "in_transit", "completed", "failed", "cancelled",
    "returned",
]  # fmt: skip
PaymentMethod = Literal["eft", "ach", "cheque", "wire", "card", "instant", "pad", "email_transfer"]
InvoiceStatus = Literal["draft", "sent", "viewed", "partially_paid", "paid", "overdue", "void"]


class CompanyBankAccount(Schema):
    """One of a company's bank accounts, as its company lists it (the whole account, with masked
    numbers and balance, is `GET /bank_accounts/{id}`)."""

    id: str
    name: str
    kind: Literal["bank", "instant_wallet"] = "bank"
    currency: str
    status: str
    is_default: bool = False


class CompanyApprovalRule(Schema):
    """One of a company's active approval rules, as its company's approval policy lists it (the
    whole rule, with its steps and approvers, is `GET /approval_rules/{id}`)."""

    id: str
    name: str
    kind: Literal["signing_authority", "threshold"]
    applies_to: Literal["bill", "payment"]
    min_amount: Money | None = None
    max_amount: Money | None = None
    bank_account_id: str | None = None
    approvals_required: int = 1


class Company(PortalObject):
    """A client book the login can reach."""

    object: Literal["company"] = "company"
    name: str
    country: str = Field(min_length=2, max_length=2)
    base_currency: str
    status: str
    is_accounting_firm: bool = False
    approval_policy: dict[str, Any] = Field(
        default_factory=dict,
        description="How the company approves: `rules`, a summary of its active approval rules "
        "(CompanyApprovalRule; signing authorities on bank accounts and amount thresholds); and what "
        "the login may do in it: `role`, `permissions`, `accounting_provider`, `outstanding_items`.",
    )
    connection_id: str | None = Field(
        default=None,
        description="The connection (portal login) it is mirrored through. Each login mirrors what it "
        "reaches: two logins that reach one client book mirror it twice, as two companies with one "
        "`upstream_id`. Put together when the company is read, as `bank_accounts` is.",
    )
    bank_accounts: list[CompanyBankAccount] | None = Field(
        default=None,
        description="The company's bank accounts and wallets, default first. Like "
        "`approval_policy.rules`, put together from the mirrored accounts and rules when the company "
        "is read: null (and `rules` absent) in the company's events.",
    )


class BankAccount(PortalObject):
    """A company's funding account or Plooto Instant wallet; numbers are masked."""

    object: Literal["bank_account"] = "bank_account"
    name: str
    institution_name: str | None = None
    kind: Literal["bank", "instant_wallet"] = "bank"
    currency: str
    account_number_masked: str | None = Field(default=None, examples=["*****6863"])
    routing_masked: str | None = None
    status: str
    is_default: bool = False
    signing_authorities: list[str] = Field(default_factory=list)
    approvals_required: int = 1
    balance: Money | None = None


class User(PortalObject):
    """A portal user's role in one company."""

    object: Literal["user"] = "user"
    name: str
    email: str
    role: Literal["administrator", "cfo", "accountant", "viewer", "custom"]
    permissions: list[str] = Field(default_factory=list)
    can_approve: bool = False
    mfa_enforced: bool = False


class ApprovalRule(PortalObject):
    """k-of-N signing authorities on a bank account, or a threshold-based approval chain."""

    object: Literal["approval_rule"] = "approval_rule"
    name: str
    kind: Literal["signing_authority", "threshold"]
    applies_to: Literal["bill", "payment"]
    min_amount: Money | None = None
    max_amount: Money | None = None
    bank_account_id: str | None = None
    approvals_required: int = 1
    steps: list[dict[str, Any]] = Field(default_factory=list)
    active: bool = True


class PaymentMethodOnFile(Schema):
    """A masked payment method of a vendor or customer."""

    id: str | None = None
    type: str
    masked: str | None = None
    currency: str | None = None
    institution_name: str | None = None
    is_default: bool = False


class Vendor(PortalObject):
    """A payee."""

    object: Literal["vendor"] = "vendor"
    name: str
    email: str | None = None
    currency: str
    status: Literal["active"] = (
        "active"  # the portal lists active contacts only; a deleted one has deleted_at
    )
    network_connected: bool = Field(default=False, description="Connected through the Plooto Network.")
    network_id: str | None = None
    address: dict[str, Any] | None = None
    payment_methods: list[PaymentMethodOnFile] = Field(default_factory=list)
    default_payment_method: PaymentMethod | None = None


class Customer(PortalObject):
    """A payer."""

    object: Literal["customer"] = "customer"
    name: str
    email: str | None = None
    currency: str
    status: Literal["active"] = (
        "active"  # the portal lists active contacts only; a deleted one has deleted_at
    )
    address: dict[str, Any] | None = None
    payment_methods: list[PaymentMethodOnFile] = Field(default_factory=list)
    pad_agreement_status: str | None = None


class LineItem(Schema):
    """One line of a bill or invoice."""

    description: str
    quantity: Decimal = Decimal(1)
    unit_price: Money
    amount: Money
    account_code: str | None = None


class ApprovalStep(Schema):
    """One approver's place in a chain and their decision."""

    level: int = 1
    approver_id: str | None = None
    approver_name: str | None = None
    approver_email: str | None = None
    decision: Decision = Field(
        default="pending",
        description="pending: awaiting this approver; approved or rejected: their decision; skipped: they "
        "never decided and no longer will (another approver on the level did, or the chain ended first).",
    )
    decided_at: datetime | None = None
    comment: str | None = None


class Approval(Schema):
    """Where an object stands in its approval workflow."""

    status: ApprovalStatus
    steps: list[ApprovalStep] = Field(default_factory=list)


class Bill(PortalObject):
    """A payable document."""

    object: Literal["bill"] = "bill"
    vendor_id: str | None = None
    number: str | None = None
    issue_date: date | None = None
    due_date: date | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    subtotal: Money
    tax: Money
    total: Money
    amount_paid: Money
    amount_scheduled: Money | None = Field(
        default=None,
        description="Taken by payments scheduled (or awaiting approval) and not yet paid: "
        "total = amount_paid + amount_scheduled + amount_due.",
    )
    amount_due: Money = Field(description="Still open: neither paid nor taken by a scheduled payment.")
    status: BillStatus
    approval: Approval
    memo: str | None = None
    reference: str | None = Field(
        default=None, description="The gateway's reference, for a bill created through it (`papi-op_…`)."
    )
    source: Literal["manual", "capture", "accounting"] = "manual"
    capture: dict[str, Any] | None = Field(
        default=None, description="OCR fields and confidence, for bills from a captured document."
    )
    captured_document_id: str | None = None
    attachments: list[dict[str, Any]] = Field(default_factory=list)


class PaymentStatusChange(Schema):
    """One step in a payment's life."""

    status: PaymentStatus
    status_raw: str | None = None
    occurred_at: datetime
    reason: str | None = None


class PaymentAllocation(Schema):
    """The part of a payment applied to one bill or invoice."""

    bill_id: str | None = None
    invoice_id: str | None = None
    amount: Money


class Payment(PortalObject):
    """A payable or receivable payment."""

    object: Literal["payment"] = "payment"
    direction: Literal["payable", "receivable"]
    vendor_id: str | None = None
    customer_id: str | None = None
    allocations: list[PaymentAllocation] = Field(default_factory=list)
    amount: Money
    method: PaymentMethod
    debit_bank_account_id: str | None = None
    debit_account_masked: str | None = None
    credit_account_masked: str | None = None
    scheduled_for: date | None = None
    expected_arrival: date | None = None
    completed_at: datetime | None = None
    status: PaymentStatus
    status_history: list[PaymentStatusChange] = Field(default_factory=list)
    hold_reason: str | None = Field(
        default=None,
        description="Why the portal holds the payment (a security or compliance review), while it does; "
        "a held payment keeps the status it had, and `upstream.status_raw` is `OnHold`.",
    )
    failure_code: str | None = None
    failure_reason: str | None = None
    trace_number: str | None = None
    reference: str | None = None
    memo: str | None = None
    fee: Money | None = None
    fx_conversion_id: str | None = None
    approval: Approval | None = None


class InvoiceReminder(Schema):
    """A payment reminder, scheduled or sent."""

    upstream_id: str | None = Field(default=None, description="The portal's id of the reminder.")
    kind: Literal["before_due", "on_due", "after_due", "manual"] | None = None
    scheduled_for: date | None = None
    sent_at: datetime | None = None
    channel: str = "email"
    status: Literal["scheduled", "sent", "cancelled"]


class Invoice(PortalObject):
    """A receivable document."""

    object: Literal["invoice"] = "invoice"
    customer_id: str | None = None
    number: str | None = None
    issue_date: date | None = None
    due_date: date | None = None
    terms: str | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    subtotal: Money
    tax: Money
    total: Money
    amount_paid: Money
    amount_due: Money
    status: InvoiceStatus
    sent_at: datetime | None = None
    scheduled_send_date: date | None = Field(
        default=None, description="For a draft the portal will send by itself: the business day it will."
    )
    viewed_at: datetime | None = None
    recurring_invoice_id: str | None = None
    reminder_schedule: list[int] = Field(
        default_factory=list, description="Days relative to the due date when reminders go out."
    )
    reminders: list[InvoiceReminder] = Field(default_factory=list)
    memo: str | None = None
    reference: str | None = None


class RecurringInvoice(PortalObject):
    """A schedule that issues invoices."""

    object: Literal["recurring_invoice"] = "recurring_invoice"
    customer_id: str | None = None
    name: str
    frequency: Literal["weekly", "biweekly", "monthly", "custom"]
    interval_days: int | None = None
    start_date: date
    end_date: date | None = None
    next_issue_date: date | None = None
    occurrences_remaining: int | None = None
    amount: Money
    status: Literal["active", "paused", "cancelled", "completed"]
    uses_pad: bool = False
    template: dict[str, Any] = Field(default_factory=dict)


class Transaction(PortalObject):
    """A movement on a bank account or wallet."""

    object: Literal["transaction"] = "transaction"
    bank_account_id: str | None = None
    payment_id: str | None = None
    kind: Literal["debit", "credit", "fee", "transfer"]
    amount: Money
    occurred_on: date
    status: str
    description: str | None = None
    counterparty: str | None = None


class FxConversion(PortalObject):
    """A currency conversion for a cross-currency payment."""

    object: Literal["fx_conversion"] = "fx_conversion"
    payment_id: str | None = None
    source: Money
    target: Money
    rate: Decimal = Field(examples=["0.731245120"])
    fee: Money | None = None
    status: Literal["quoted", "executed", "expired"]
    quoted_at: datetime
    executed_at: datetime | None = None


class CapturedDocument(PortalObject):
    """A document in Capture and what OCR read from it."""

    object: Literal["captured_document"] = "captured_document"
    filename: str
    content_type: str
    size_bytes: int | None = Field(
        default=None,
        description="The file's size, from the bill's attachment of the same name; null when the bill "
        "no longer carries the file (the portal gives the document no size of its own).",
    )
    status: Literal["uploaded", "processing", "needs_review", "converted", "published"]
    fields: dict[str, Any] = Field(default_factory=dict, description="name -> {value, confidence}")
    bill_id: str | None = None
    received_at: datetime


class SyncMapping(PortalObject):
    """A portal object's counterpart in the accounting software."""

    object: Literal["sync_mapping"] = "sync_mapping"
    object_type: Literal["bill", "customer", "invoice", "payment", "vendor"]
    object_id: str | None = None
    provider: Literal["quickbooks", "xero", "netsuite"]
    external_id: str
    status: Literal["synced", "pending", "error"]
    last_synced_at: datetime | None = None
    error: str | None = None
