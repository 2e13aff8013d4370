"""The portal's domain objects: lean slotted dataclasses, money as Decimal, times as UTC datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum


class Role(StrEnum):
    """Company roles (domain §2.2)."""

    ADMINISTRATOR = "Administrator"
    CFO = "CFO"
    ACCOUNTANT = "Accountant"
    VIEWER = "Viewer"
    CUSTOM = "Custom"


class Permission(StrEnum):
    """Permission checkboxes of the portal's Add User dialog (domain §2.2)."""

    EDIT_PAYEES = "EditPayees"
    EDIT_PAYMENTS = "EditPayments"
    APPROVE_PAYMENTS = "ApprovePayments"
    EDIT_BANK_ACCOUNTS = "EditBankAccounts"
    EDIT_APPROVAL_POLICIES = "EditApprovalPolicies"
    EDIT_USERS = "EditUsers"
    EDIT_COMPANY = "EditCompany"
    PUBLISH_DOCUMENTS = "PublishDocuments"
    CONNECT_EXTERNAL_COMPANY = "ConnectExternalCompany"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMINISTRATOR: frozenset(Permission),
    Role.CFO: frozenset(
        {
            Permission.EDIT_PAYEES,
            Permission.EDIT_PAYMENTS,
            Permission.APPROVE_PAYMENTS,
            Permission.EDIT_BANK_ACCOUNTS,
            Permission.EDIT_COMPANY,
            Permission.PUBLISH_DOCUMENTS,
        }
    ),
    Role.ACCOUNTANT: frozenset(
        {
            Permission.EDIT_PAYEES,
            Permission.EDIT_PAYMENTS,
            Permission.EDIT_BANK_ACCOUNTS,
            Permission.EDIT_COMPANY,
            Permission.PUBLISH_DOCUMENTS,
        }
    ),
    Role.VIEWER: frozenset(),
    Role.CUSTOM: frozenset(),
}


class PaymentStatus(StrEnum):
    """Payable payment statuses (domain §3.1)."""

    APPROVAL_REQUIRED = "ApprovalRequired"
    PENDING = "Pending"
    FUNDS_DEBITED = "FundsDebited"
    CLEARING = "Clearing"
    EXCHANGING = "Exchanging"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    ON_HOLD = "OnHold"
    RECALLED = "Recalled"
    REJECTED = "Rejected"
    CANCELLED = "Cancelled"
    DELETED = "Deleted"
    FAILED = "Failed"
    RETURNED = "Returned"


DISPLAY_STATUS: dict[PaymentStatus, str] = {
    PaymentStatus.APPROVAL_REQUIRED: "Approval Required",
    PaymentStatus.FUNDS_DEBITED: "Funds Debited",
    PaymentStatus.ON_HOLD: "On Hold",
}

# Payments in these statuses no longer hold any part of a bill's balance.
DEAD_PAYMENT_STATUSES = frozenset(
    {
        PaymentStatus.RECALLED,
        PaymentStatus.REJECTED,
        PaymentStatus.CANCELLED,
        PaymentStatus.DELETED,
        PaymentStatus.FAILED,
        PaymentStatus.RETURNED,
    }
)


class PaymentMethod(StrEnum):
    """Payment rails (domain §4)."""

    EFT = "Eft"
    ACH = "Ach"
    CHEQUE = "Cheque"
    WIRE = "Wire"
    CARD = "Card"
    PLOOTO_INSTANT = "PlootoInstant"
    EMAIL_MONEY_TRANSFER = "EmailMoneyTransfer"


class FailureReason(StrEnum):
    """Why a bank rejected or returned a payment."""

    INSUFFICIENT_FUNDS = "InsufficientFunds"
    INVALID_ACCOUNT = "InvalidAccount"
    INCORRECT_ACCOUNT_HOLDER_NAME = "IncorrectAccountHolderName"
    ACCOUNT_CLOSED = "AccountClosed"
    PAYMENT_STOPPED = "PaymentStopped"


class BillStatus(StrEnum):
    """Bill statuses; the payment-derived ones are computed from live payments."""

    APPROVAL_REQUIRED = "ApprovalRequired"
    OPEN = "Open"
    PARTIALLY_PAID = "PartiallyPaid"
    PAYMENT_SCHEDULED = "PaymentScheduled"
    PAID = "Paid"
    REJECTED = "Rejected"
    VOID = "Void"


class ApprovalStatus(StrEnum):
    """State of one approver's step on a bill or payment."""

    AWAITING_PREVIOUS_LEVEL = "AwaitingPreviousLevel"
    APPROVAL_MANDATORY = "ApprovalMandatory"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    SKIPPED = "Skipped"


class InvoiceStatus(StrEnum):
    """Receivable invoice statuses."""

    DRAFT = "Draft"
    SENT = "Sent"
    VIEWED = "Viewed"
    PARTIALLY_PAID = "PartiallyPaid"
    PAID = "Paid"
    OVERDUE = "Overdue"
    VOID = "Void"


class CustomerPaymentStatus(StrEnum):
    """Statuses of money collected from a customer."""

    PENDING = "Pending"
    FUNDS_DEBITED = "FundsDebited"
    CLEARING = "Clearing"
    COMPLETED = "Completed"
    FAILED = "Failed"


@dataclass(slots=True)
class AccountingLink:
    """Where an object lives in the company's accounting software."""

    provider: str
    external_id: str
    sync_status: str
    last_synced_at: datetime | None


@dataclass(slots=True)
class Tracked:
    """Creation and modification stamps shared by every listable object."""

    created: datetime
    modified: datetime
    seq: int


@dataclass(slots=True)
class Company:
    """A client company (one "book") reachable through the company selector."""

    company_id: str
    name: str
    slug: str
    country: str
    base_currency: str
    status: str
    accounting_provider: str | None
    is_accounting_firm: bool
    instant_balances: dict[str, Decimal]


@dataclass(slots=True)
class User:
    """A portal login; passwords are stored as scrypt hashes."""

    user_id: str
    email: str
    first_name: str
    last_name: str
    password_salt: bytes
    password_hash: bytes
    mfa_method: str | None
    totp_secret: str | None
    phone: str | None
    failed_attempts: int = 0
    locked_until: datetime | None = None

    @property
    def display_name(self) -> str:
        """ "First Last", as the portal shows users."""
        return f"{self.first_name} {self.last_name}"


@dataclass(slots=True)
class Membership:
    """A user's role and permissions in one company."""

    user_id: str
    company_id: str
    role: Role
    permissions: frozenset[Permission]


@dataclass(slots=True)
class BankAccount(Tracked):
    """A company funding account with its k-of-N signing authorities."""

    bank_account_id: str
    company_id: str
    name: str
    institution_name: str
    currency: str
    account_number: str
    verification_status: str
    signing_authorities: list[str]
    required_approvals: int
    nsf: bool = False


@dataclass(slots=True)
class ApprovalLevel:
    """One sequential level of a bill approval policy; any listed approver satisfies it."""

    level: int
    approver_user_ids: list[str]


@dataclass(slots=True)
class ApprovalPolicy(Tracked):
    """Threshold-based multi-level policy applied to bills."""

    approval_policy_id: str
    company_id: str
    name: str
    currency: str
    minimum_amount: Decimal
    levels: list[ApprovalLevel]


@dataclass(slots=True)
class PayeeMethod:
    """How a vendor gets paid; full account numbers never leave the sandbox."""

    payment_method_id: str
    type: str
    currency: str
    institution_name: str | None
    account_number: str | None
    account_holder_name: str | None
    mailing_address: str | None
    # Set by the seed or control API: the bank will return payments to this method.
    return_reason: FailureReason | None = None


@dataclass(slots=True)
class Vendor(Tracked):
    """A payee contact."""

    vendor_id: str
    company_id: str
    display_name: str
    email: str | None
    currency: str
    network_connected: bool
    payment_methods: list[PayeeMethod]
    default_payment_method_id: str | None
    accounting: AccountingLink | None


@dataclass(slots=True)
class Customer(Tracked):
    """A payer contact for receivables."""

    customer_id: str
    company_id: str
    display_name: str
    email: str
    currency: str
    pad_status: str
    card_last4: str | None
    accounting: AccountingLink | None


@dataclass(slots=True)
class LineItem:
    """A bill or invoice line."""

    line_item_id: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    account_code: str | None


@dataclass(slots=True)
class Attachment:
    """A file attached to a bill (content kept only as its size)."""

    attachment_id: str
    file_name: str
    content_type: str
    size_bytes: int
    uploaded: datetime


@dataclass(slots=True)
class ExtractedField:
    """One OCR-extracted value with the engine's confidence (0..1)."""

    value: str
    confidence: Decimal


@dataclass(slots=True)
class CapturedDocument:
    """What Plooto Capture read from an uploaded bill."""

    document_id: str
    file_name: str
    fields: dict[str, ExtractedField]
    overall_confidence: Decimal


@dataclass(slots=True)
class ApprovalStep:
    """One approver's decision slot on a bill."""

    step_id: str
    level: int
    approver_user_id: str
    status: ApprovalStatus
    decision_date: datetime | None = None
    comment: str | None = None


@dataclass(slots=True)
class Bill(Tracked):
    """A payable document; balances are kept current by the payment engine."""

    bill_id: str
    company_id: str
    vendor_id: str
    bill_number: str
    currency: str
    issue_date: date
    due_date: date
    line_items: list[LineItem]
    total: Decimal
    approval: str  # "Pending" | "Approved" | "Rejected"
    voided: bool
    source: str
    memo: str | None
    created_by: str | None
    approval_policy_id: str | None
    approval_steps: list[ApprovalStep]
    attachments: list[Attachment]
    captured: CapturedDocument | None
    payment_ids: list[str]
    accounting: AccountingLink | None
    paid_amount: Decimal
    scheduled_amount: Decimal

    @property
    def open_balance(self) -> Decimal:
        """What is neither paid nor covered by a live payment."""
        return self.total - self.paid_amount - self.scheduled_amount

    @property
    def status(self) -> BillStatus:
        """Derived from approval, voiding and live payments (README §4)."""
        if self.voided:
            return BillStatus.VOID
        if self.approval == "Rejected":
            return BillStatus.REJECTED
        if self.approval == "Pending":
            return BillStatus.APPROVAL_REQUIRED
        if self.paid_amount >= self.total:
            return BillStatus.PAID
        if self.open_balance <= 0:
            return BillStatus.PAYMENT_SCHEDULED
        if self.open_balance < self.total:
            return BillStatus.PARTIALLY_PAID
        return BillStatus.OPEN


@dataclass(slots=True)
class PaymentLine:
    """The part of a payment applied to one bill."""

    bill_id: str
    memo: str | None
    amount: Decimal


@dataclass(slots=True)
class PaymentApproval:
    """A signing authority's decision on a payment."""

    approver_user_id: str
    status: ApprovalStatus
    decision_date: datetime | None = None


@dataclass(slots=True)
class AuditEntry:
    """One timestamped line of a payment's audit trail."""

    timestamp: datetime
    description: str


@dataclass(slots=True)
class Payment(Tracked):
    """A payable payment moving along one rail."""

    payment_id: str
    company_id: str
    line_items: list[PaymentLine]
    vendor_id: str
    payee_method_id: str | None
    method: PaymentMethod
    amount: Decimal
    destination_currency: str
    source_currency: str
    source_amount: Decimal
    exchange_rate: Decimal
    mid_market_rate: Decimal
    fee: Decimal
    debit_bank_account_id: str
    requested_debit_date: date
    scheduled_debit_date: date | None
    debited_date: date | None
    estimated_arrival: date | None
    completed_date: date | None
    status: PaymentStatus
    failure_reason: FailureReason | None
    hold_reason: str | None
    status_before_hold: PaymentStatus | None
    memo: str | None
    external_reference: str | None
    initiated_by: str
    approvals: list[PaymentApproval]
    required_approvals: int
    audit: list[AuditEntry]
    accounting: AccountingLink | None
    claimed: bool = False


@dataclass(slots=True)
class ReminderSchedule:
    """When automatic payment reminders go out, relative to the due date."""

    enabled: bool
    days_before_due: list[int]
    days_after_due: list[int]


@dataclass(slots=True)
class Invoice(Tracked):
    """A receivable invoice; its payment status derives from completed allocations."""

    invoice_id: str
    company_id: str
    invoice_number: str
    customer_id: str
    currency: str
    issue_date: date
    due_date: date
    terms: str
    line_items: list[LineItem]
    total: Decimal
    amount_paid: Decimal
    delivery: str  # "Draft" | "Sent" | "Viewed" | "Void"
    overdue: bool
    sent_date: datetime | None
    viewed_date: datetime | None
    scheduled_send_date: date | None
    reminder_schedule: ReminderSchedule
    recurring_invoice_id: str | None
    memo: str | None
    accounting: AccountingLink | None

    @property
    def balance_due(self) -> Decimal:
        """What the customer still owes."""
        return self.total - self.amount_paid

    @property
    def status(self) -> InvoiceStatus:
        """Derived from delivery, payments received and the due date (README §4)."""
        if self.delivery == "Void":
            return InvoiceStatus.VOID
        if self.delivery == "Draft":
            return InvoiceStatus.DRAFT
        if self.amount_paid >= self.total:
            return InvoiceStatus.PAID
        if self.overdue:
            return InvoiceStatus.OVERDUE
        if self.amount_paid > 0:
            return InvoiceStatus.PARTIALLY_PAID
        return InvoiceStatus.VIEWED if self.delivery == "Viewed" else InvoiceStatus.SENT


@dataclass(slots=True)
class RecurringInvoice(Tracked):
    """A template that issues and sends an invoice every period."""

    recurring_invoice_id: str
    company_id: str
    customer_id: str
    currency: str
    line_items: list[LineItem]
    terms: str
    frequency: str
    start_date: date
    end_date: date | None
    next_issue_date: date | None
    status: str
    invoice_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Reminder(Tracked):
    """A scheduled or sent payment reminder e-mail."""

    reminder_id: str
    company_id: str
    invoice_id: str
    kind: str
    scheduled_for: datetime
    sent_at: datetime | None
    status: str
    recipient: str


@dataclass(slots=True)
class Allocation:
    """Part of a customer payment applied to one invoice."""

    invoice_id: str
    amount: Decimal


@dataclass(slots=True)
class CustomerPayment(Tracked):
    """Money collected from a customer by pre-authorized debit or card."""

    customer_payment_id: str
    company_id: str
    customer_id: str
    method: str
    amount: Decimal
    currency: str
    fee: Decimal
    status: CustomerPaymentStatus
    failure_reason: str | None
    debit_date: date
    deposit_date: date | None
    allocations: list[Allocation]
    accounting: AccountingLink | None
    audit: list[AuditEntry] = field(default_factory=list)

    @property
    def match_status(self) -> str:
        """How much of the payment is allocated to invoices."""
        allocated = sum((a.amount for a in self.allocations), Decimal(0))
        if allocated <= 0:
            return "Unmatched"
        return "Matched" if allocated >= self.amount else "PartiallyMatched"


@dataclass(slots=True)
class OutboxMessage:
    """An SMS or e-mail the portal "sent" (kept for tests and demos)."""

    kind: str
    to: str
    user_email: str | None
    subject: str | None
    body: str
    code: str | None
    sent_at: datetime
