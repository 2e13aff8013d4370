"""Tables for the normalized objects mirrored from the portal (DESIGN §3).

Money is integer minor units (`*_minor`) beside a `currency` column; FX rates are exact decimal text.
Indexes follow the list filters of DESIGN §4: company first, then the filtered column, then id
(list order), so a filtered page is one index range scan.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from plooto_api.store.base import Base, CompanyOwnedMixin, MirroredMixin
from plooto_api.store.types import DecimalText


def _mirrored_args(table: str, *extra: Any) -> tuple[Any, ...]:
    """Table args every mirrored table has: one row per portal object per connection."""
    return (
        UniqueConstraint("connection_id", "upstream_id"),
        Index(f"ix_{table}_company_id_id", "company_id", "id"),
        Index(f"ix_{table}_company_id_updated_at", "company_id", "updated_at"),
        Index(f"ix_{table}_updated_at", "updated_at"),
        *extra,
    )


class Company(MirroredMixin, Base):
    """A client book: one company in the portal that the login can reach."""

    __tablename__ = "companies"
    __table_args__ = (UniqueConstraint("connection_id", "upstream_id"),)

    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    base_currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), default="active")
    is_accounting_firm: Mapped[bool] = mapped_column(default=False)
    approval_policy: Mapped[dict[str, Any]] = mapped_column(default=dict)


class BankAccount(CompanyOwnedMixin, Base):
    """A funding account of a company (or its Plooto Instant wallet). Numbers are stored masked only."""

    __tablename__ = "bank_accounts"
    __table_args__ = _mirrored_args("bank_accounts")

    name: Mapped[str] = mapped_column(String(200))
    institution_name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="bank")  # bank · instant_wallet
    currency: Mapped[str] = mapped_column(String(3))
    account_number_masked: Mapped[str | None] = mapped_column(String(40))
    routing_masked: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(32))  # active · validation_pending · disabled
    is_default: Mapped[bool] = mapped_column(default=False)
    signing_authorities: Mapped[list[Any]] = mapped_column(default=list)  # user ids
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    balance_minor: Mapped[int | None] = mapped_column(BigInteger)


class PortalUser(CompanyOwnedMixin, Base):
    """A portal user's membership of one company: role, permissions, whether they approve."""

    __tablename__ = "portal_users"
    __table_args__ = _mirrored_args("portal_users")

    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(32))  # administrator · cfo · accountant · viewer · custom
    permissions: Mapped[list[Any]] = mapped_column(default=list)
    can_approve: Mapped[bool] = mapped_column(default=False)
    mfa_enforced: Mapped[bool] = mapped_column(default=False)


class ApprovalRule(CompanyOwnedMixin, Base):
    """An approval policy: k-of-N signing authorities on a bank account, or a threshold chain."""

    __tablename__ = "approval_rules"
    __table_args__ = _mirrored_args("approval_rules")

    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))  # signing_authority · threshold
    applies_to: Mapped[str] = mapped_column(String(32))  # bill · payment
    currency: Mapped[str | None] = mapped_column(String(3))
    min_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    max_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    bank_account_id: Mapped[str | None] = mapped_column(String(40))
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    steps: Mapped[list[Any]] = mapped_column(default=list)  # [{level, approver_ids, required}]
    active: Mapped[bool] = mapped_column(default=True)


class Vendor(CompanyOwnedMixin, Base):
    """A payee. Payment methods are kept masked."""

    __tablename__ = "vendors"
    __table_args__ = _mirrored_args("vendors", Index("ix_vendors_company_id_name", "company_id", "name"))

    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), default="active")
    network_connected: Mapped[bool] = mapped_column(default=False)
    network_id: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[dict[str, Any] | None] = mapped_column()
    payment_methods: Mapped[list[Any]] = mapped_column(default=list)
    default_payment_method: Mapped[str | None] = mapped_column(String(32))


class Customer(CompanyOwnedMixin, Base):
    """A payer. Payment methods (pre-authorized debit, card) are kept masked."""

    __tablename__ = "customers"
    __table_args__ = _mirrored_args("customers", Index("ix_customers_company_id_name", "company_id", "name"))

    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), default="active")
    address: Mapped[dict[str, Any] | None] = mapped_column()
    payment_methods: Mapped[list[Any]] = mapped_column(default=list)
    pad_agreement_status: Mapped[str | None] = mapped_column(String(32))


class Bill(CompanyOwnedMixin, Base):
    """A payable document, its totals, its approval state and, if captured, its OCR fields."""

    __tablename__ = "bills"
    __table_args__ = _mirrored_args(
        "bills",
        Index("ix_bills_company_id_status_id", "company_id", "status", "id"),
        Index("ix_bills_company_id_approval_status_id", "company_id", "approval_status", "id"),
        Index("ix_bills_company_id_vendor_id_id", "company_id", "vendor_id", "id"),
        Index("ix_bills_company_id_due_date", "company_id", "due_date"),
        Index("ix_bills_status_id", "status", "id"),
    )

    vendor_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("vendors.id", ondelete="SET NULL"))
    vendor_upstream_id: Mapped[str | None] = mapped_column(String(128))
    number: Mapped[str | None] = mapped_column(String(100))
    issue_date: Mapped[date | None]
    due_date: Mapped[date | None]
    currency: Mapped[str] = mapped_column(String(3))
    subtotal_minor: Mapped[int] = mapped_column(BigInteger)
    tax_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_scheduled_minor: Mapped[int | None] = mapped_column(BigInteger)
    amount_due_minor: Mapped[int] = mapped_column(BigInteger)
    # draft · pending_approval · approved · scheduled · partially_paid · paid · rejected · void
    status: Mapped[str] = mapped_column(String(32))
    # not_required · pending · approved · rejected · cancelled
    approval_status: Mapped[str] = mapped_column(String(32))
    memo: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(String(100))  # the gateway's, for a bill it created
    source: Mapped[str] = mapped_column(String(32), default="manual")  # manual · capture · accounting
    capture: Mapped[dict[str, Any] | None] = mapped_column()
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    captured_document_id: Mapped[str | None] = mapped_column(String(40))

    line_items: Mapped[list[BillLineItem]] = relationship(
        back_populates="bill", cascade="all, delete-orphan", order_by="BillLineItem.position"
    )
    approval_steps: Mapped[list[BillApprovalStep]] = relationship(
        back_populates="bill", cascade="all, delete-orphan", order_by="BillApprovalStep.position"
    )


class BillLineItem(Base):
    """One line of a bill."""

    __tablename__ = "bill_line_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    bill_id: Mapped[str] = mapped_column(String(40), ForeignKey("bills.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(500))
    quantity: Mapped[Decimal] = mapped_column(DecimalText, default=Decimal(1))
    unit_price_minor: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    account_code: Mapped[str | None] = mapped_column(String(64))

    bill: Mapped[Bill] = relationship(back_populates="line_items")


class BillApprovalStep(Base):
    """One approver's place in a bill's approval chain, and their decision."""

    __tablename__ = "bill_approval_steps"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    bill_id: Mapped[str] = mapped_column(String(40), ForeignKey("bills.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(Integer, default=1)
    approver_user_id: Mapped[str | None] = mapped_column(String(40))
    approver_name: Mapped[str | None] = mapped_column(String(200))
    approver_email: Mapped[str | None] = mapped_column(String(320))
    # pending · approved · rejected · skipped
    decision: Mapped[str] = mapped_column(String(32), default="pending")
    decided_at: Mapped[datetime | None]
    comment: Mapped[str | None] = mapped_column(Text)

    bill: Mapped[Bill] = relationship(back_populates="approval_steps")


class Payment(CompanyOwnedMixin, Base):
    """Money moving out (payable) or in (receivable), with its lifecycle."""

    __tablename__ = "payments"
    __table_args__ = _mirrored_args(
        "payments",
        Index("ix_payments_company_id_status_id", "company_id", "status", "id"),
        Index("ix_payments_company_id_vendor_id_id", "company_id", "vendor_id", "id"),
        Index("ix_payments_company_id_customer_id_id", "company_id", "customer_id", "id"),
        Index("ix_payments_reference", "reference"),
    )

    direction: Mapped[str] = mapped_column(String(16))  # payable · receivable
    vendor_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("vendors.id", ondelete="SET NULL"))
    customer_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("customers.id", ondelete="SET NULL")
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # eft · ach · cheque · wire · card · instant · pad · email_transfer
    method: Mapped[str] = mapped_column(String(32))
    debit_bank_account_id: Mapped[str | None] = mapped_column(String(40))
    debit_account_masked: Mapped[str | None] = mapped_column(String(40))
    credit_account_masked: Mapped[str | None] = mapped_column(String(40))
    scheduled_for: Mapped[date | None]
    expected_arrival: Mapped[date | None]
    completed_at: Mapped[datetime | None]
    # pending_approval · scheduled · processing · in_transit · completed · failed · cancelled · returned
    status: Mapped[str] = mapped_column(String(32))
    hold_reason: Mapped[str | None] = mapped_column(Text)  # while the portal holds the payment
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    trace_number: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(100))  # the gateway's reference, written upstream
    memo: Mapped[str | None] = mapped_column(Text)
    fee_minor: Mapped[int | None] = mapped_column(BigInteger)
    fee_currency: Mapped[str | None] = mapped_column(String(3))
    fx_conversion_id: Mapped[str | None] = mapped_column(String(40))
    approval: Mapped[dict[str, Any] | None] = mapped_column()  # {status, required, steps: [...]}

    status_history: Mapped[list[PaymentStatusChange]] = relationship(
        back_populates="payment", cascade="all, delete-orphan", order_by="PaymentStatusChange.id"
    )
    allocations: Mapped[list[PaymentAllocation]] = relationship(
        back_populates="payment", cascade="all, delete-orphan", order_by="PaymentAllocation.id"
    )


class PaymentStatusChange(Base):
    """One step of a payment's status history."""

    __tablename__ = "payment_status_changes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    payment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("payments.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(32))
    status_raw: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)

    payment: Mapped[Payment] = relationship(back_populates="status_history")


class PaymentAllocation(Base):
    """How much of a payment went to which bill or invoice."""

    __tablename__ = "payment_allocations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    payment_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("payments.id", ondelete="CASCADE"), index=True
    )
    bill_id: Mapped[str | None] = mapped_column(String(40), index=True)
    invoice_id: Mapped[str | None] = mapped_column(String(40), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)

    payment: Mapped[Payment] = relationship(back_populates="allocations")


class Invoice(CompanyOwnedMixin, Base):
    """A receivable document sent to a customer."""

    __tablename__ = "invoices"
    __table_args__ = _mirrored_args(
        "invoices",
        Index("ix_invoices_company_id_status_id", "company_id", "status", "id"),
        Index("ix_invoices_company_id_customer_id_id", "company_id", "customer_id", "id"),
        Index("ix_invoices_company_id_due_date", "company_id", "due_date"),
    )

    customer_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("customers.id", ondelete="SET NULL")
    )
    customer_upstream_id: Mapped[str | None] = mapped_column(String(128))
    number: Mapped[str | None] = mapped_column(String(100))
    issue_date: Mapped[date | None]
    due_date: Mapped[date | None]
    terms: Mapped[str | None] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    subtotal_minor: Mapped[int] = mapped_column(BigInteger)
    tax_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_due_minor: Mapped[int] = mapped_column(BigInteger)
    # draft · sent · viewed · partially_paid · paid · overdue · void
    status: Mapped[str] = mapped_column(String(32))
    sent_at: Mapped[datetime | None]
    scheduled_send_date: Mapped[date | None]
    viewed_at: Mapped[datetime | None]
    recurring_invoice_id: Mapped[str | None] = mapped_column(String(40))
    reminder_schedule: Mapped[list[Any]] = mapped_column(default=list)  # days relative to due date
    memo: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(String(100))

    line_items: Mapped[list[InvoiceLineItem]] = relationship(
        back_populates="invoice", cascade="all, delete-orphan", order_by="InvoiceLineItem.position"
    )
    reminders: Mapped[list[InvoiceReminder]] = relationship(
        back_populates="invoice", cascade="all, delete-orphan", order_by="InvoiceReminder.id"
    )


class InvoiceLineItem(Base):
    """One line of an invoice."""

    __tablename__ = "invoice_line_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(500))
    quantity: Mapped[Decimal] = mapped_column(DecimalText, default=Decimal(1))
    unit_price_minor: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    account_code: Mapped[str | None] = mapped_column(String(64))

    invoice: Mapped[Invoice] = relationship(back_populates="line_items")


class InvoiceReminder(Base):
    """A payment reminder for an invoice: scheduled, or already sent."""

    __tablename__ = "invoice_reminders"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    upstream_id: Mapped[str | None] = mapped_column(String(64))  # the portal's reminder id
    kind: Mapped[str | None] = mapped_column(String(16))  # before_due · on_due · after_due · manual
    scheduled_for: Mapped[date | None]
    sent_at: Mapped[datetime | None]
    channel: Mapped[str] = mapped_column(String(16), default="email")
    status: Mapped[str] = mapped_column(String(16))  # scheduled · sent · cancelled

    invoice: Mapped[Invoice] = relationship(back_populates="reminders")


class RecurringInvoice(CompanyOwnedMixin, Base):
    """A schedule that issues invoices to a customer."""

    __tablename__ = "recurring_invoices"
    __table_args__ = _mirrored_args("recurring_invoices")

    customer_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("customers.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(200))
    frequency: Mapped[str] = mapped_column(String(16))  # weekly · biweekly · monthly · custom
    interval_days: Mapped[int | None] = mapped_column(Integer)
    start_date: Mapped[date]
    end_date: Mapped[date | None]
    next_issue_date: Mapped[date | None]
    occurrences_remaining: Mapped[int | None] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # active · paused · cancelled · completed
    uses_pad: Mapped[bool] = mapped_column(default=False)
    template: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Transaction(CompanyOwnedMixin, Base):
    """A movement on a bank account or wallet: debit, credit, fee or transfer."""

    __tablename__ = "transactions"
    __table_args__ = _mirrored_args(
        "transactions", Index("ix_transactions_company_id_occurred_on", "company_id", "occurred_on")
    )

    bank_account_id: Mapped[str | None] = mapped_column(String(40))
    payment_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))  # debit · credit · fee · transfer
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    occurred_on: Mapped[date]
    status: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(String(500))
    counterparty: Mapped[str | None] = mapped_column(String(200))


class FxConversion(CompanyOwnedMixin, Base):
    """A currency conversion quoted or executed for a cross-currency payment."""

    __tablename__ = "fx_conversions"
    __table_args__ = _mirrored_args("fx_conversions")

    payment_id: Mapped[str | None] = mapped_column(String(40))
    source_currency: Mapped[str] = mapped_column(String(3))
    source_amount_minor: Mapped[int] = mapped_column(BigInteger)
    target_currency: Mapped[str] = mapped_column(String(3))
    target_amount_minor: Mapped[int] = mapped_column(BigInteger)
    rate: Mapped[Decimal] = mapped_column(DecimalText)
    fee_minor: Mapped[int | None] = mapped_column(BigInteger)
    fee_currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # quoted · executed · expired
    quoted_at: Mapped[datetime]
    executed_at: Mapped[datetime | None]


class CapturedDocument(CompanyOwnedMixin, Base):
    """A document uploaded or e-mailed to Capture, with the fields OCR read from it."""

    __tablename__ = "captured_documents"
    __table_args__ = _mirrored_args("captured_documents")

    filename: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)  # null: the bill lacks the file
    # uploaded · processing · needs_review · converted · published
    status: Mapped[str] = mapped_column(String(32))
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> {value, confidence}
    bill_id: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime]


class SyncMapping(CompanyOwnedMixin, Base):
    """The link between a portal object and its record in the accounting software."""

    __tablename__ = "sync_mappings"
    __table_args__ = _mirrored_args("sync_mappings", Index("ix_sync_mappings_object_id", "object_id"))

    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(16))  # quickbooks · xero · netsuite
    external_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # synced · pending · error
    last_synced_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
