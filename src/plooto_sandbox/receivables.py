"""Receivables: invoices, recurring invoices, payment reminders and customer payments with matching."""

from __future__ import annotations

from datetime import date, time, timedelta
from decimal import Decimal

from plooto_sandbox.accounting import schedule_sync
from plooto_sandbox.business_days import (
    at_local,
    calendar_for,
    check_document_date,
    check_scheduled_date,
    local_date,
)
from plooto_sandbox.errors import PortalError, invalid_state, rule
from plooto_sandbox.model import (
    AccountingLink,
    Allocation,
    AuditEntry,
    Customer,
    CustomerPayment,
    CustomerPaymentStatus,
    Invoice,
    InvoiceStatus,
    LineItem,
    OutboxMessage,
    RecurringInvoice,
    Reminder,
    ReminderSchedule,
)
from plooto_sandbox.money import ZERO, money
from plooto_sandbox.store import PortalState

TERMS_DAYS: dict[str, int] = {"DueOnReceipt": 0, "Net15": 15, "Net30": 30, "Net45": 45, "Net60": 60}
FREQUENCY_DAYS: dict[str, int] = {"Weekly": 7, "BiWeekly": 14}
SEND_TIME = time(9, 0)
RECURRING_TIME = time(8, 0)
PAD_FEE = Decimal("0.50")
CARD_FEE_RATE = Decimal("0.029")
CARD_FEE_FIXED = Decimal("0.30")
OPEN_STATUSES = (
    InvoiceStatus.SENT,
    InvoiceStatus.VIEWED,
    InvoiceStatus.PARTIALLY_PAID,
    InvoiceStatus.OVERDUE,
)


def default_reminders() -> ReminderSchedule:
    """Three days before due, then one and seven days after."""
    return ReminderSchedule(enabled=True, days_before_due=[3], days_after_due=[1, 7])


def next_period(day: date, frequency: str) -> date:
    """The next issue date of a recurring plan (monthly clamps to the month's last day)."""
    if frequency in FREQUENCY_DAYS:
        return day + timedelta(days=FREQUENCY_DAYS[frequency])
    month = day.month % 12 + 1
    year = day.year + (1 if day.month == 12 else 0)
    for candidate_day in (day.day, 30, 29, 28):
        try:
            return date(year, month, candidate_day)
        except ValueError:
            continue
    raise ValueError("unreachable")


def next_invoice_number(state: PortalState, company_id: str) -> str:
    """The company's next INV-nnnnnn number."""
    number = state.invoice_counters.get(company_id, 1000) + 1
    state.invoice_counters[company_id] = number
    return f"INV-{number:06d}"


def check_invoice_dates(
    state: PortalState,
    issue_date: date | None,
    due_date: date | None,
    scheduled_send_date: date | None,
    recurring_end_date: date | None,
) -> None:
    """400 ValidationFailed for a date of a new invoice (or its recurring plan) out of the portal's
    reach; checked before the plan or the invoice is created."""
    today = local_date(state.now)
    for day, field in (
        (issue_date, "issueDate"), (due_date, "dueDate"), (recurring_end_date, "recurring.endDate")
    ):  # fmt: skip
        if day is not None:
            check_document_date(day, today, field)
    if scheduled_send_date is not None:
        check_scheduled_date(scheduled_send_date, today, "scheduledSendDate")


def create_invoice(
    state: PortalState,
    customer: Customer,
    invoice_number: str | None,
    issue_date: date,
    terms: str,
    due_date: date | None,
    line_items: list[LineItem],
    memo: str | None,
    send: str,
    scheduled_send_date: date | None,
    reminder_schedule: ReminderSchedule,
    recurring_invoice_id: str | None,
    accounting: AccountingLink | None,
) -> Invoice:
    """Create an invoice and send it now, schedule its sending, or keep it as a draft."""
    if terms not in TERMS_DAYS:
        raise PortalError(
            400, "ValidationFailed", "Unknown terms.", [{"field": "terms", "message": "Unknown terms."}]
        )
    if not line_items:
        raise PortalError(
            400,
            "ValidationFailed",
            "An invoice needs line items.",
            [{"field": "lineItems", "message": "Required."}],
        )
    due = due_date or issue_date + timedelta(days=TERMS_DAYS[terms])
    if due < issue_date:
        raise rule("BusinessRuleViolation", "Due date cannot be before the issue date.", "dueDate")
    if send == "Scheduled":
        if scheduled_send_date is None:
            raise PortalError(
                400,
                "ValidationFailed",
                "scheduledSendDate is required.",
                [{"field": "scheduledSendDate", "message": "Required."}],
            )
        if scheduled_send_date < local_date(state.now):
            raise rule("BusinessRuleViolation", "Scheduled send date is in the past.", "scheduledSendDate")
    total = money(sum((line.amount for line in line_items), ZERO))
    if total <= 0:
        raise rule("BusinessRuleViolation", "Invoice total must be positive.", "lineItems")
    invoice = Invoice(
        created=state.now,
        modified=state.now,
        seq=0,
        invoice_id=state.new_id(),
        company_id=customer.company_id,
        invoice_number=invoice_number or next_invoice_number(state, customer.company_id),
        customer_id=customer.customer_id,
        currency=customer.currency,
        issue_date=issue_date,
        due_date=due,
        terms=terms,
        line_items=line_items,
        total=total,
        amount_paid=ZERO,
        delivery="Draft",
        overdue=False,
        sent_date=None,
        viewed_date=None,
        scheduled_send_date=scheduled_send_date if send == "Scheduled" else None,
        reminder_schedule=reminder_schedule,
        recurring_invoice_id=recurring_invoice_id,
        memo=memo,
        accounting=accounting,
    )
    state.add(invoice, invoice.company_id, invoice.invoice_id)
    schedule_sync(state, "invoice", invoice.company_id, invoice.invoice_id)
    if send == "Now":
        send_invoice(state, invoice)
    elif send == "Scheduled" and scheduled_send_date is not None:
        state.schedule(at_local(scheduled_send_date, SEND_TIME), "invoice_send", invoice.invoice_id, "Draft")
    return invoice


def send_invoice(state: PortalState, invoice: Invoice) -> None:
    """E-mail the invoice to the customer and arm its reminders and overdue check."""
    if invoice.status is not InvoiceStatus.DRAFT:
        raise invalid_state(f"Invoice is {invoice.status.value}; only drafts can be sent.")
    customer = state.get(Customer, invoice.customer_id)
    invoice.delivery = "Sent"
    invoice.sent_date = state.now
    invoice.scheduled_send_date = None
    state.touch_invoice(invoice)
    if customer is not None:
        state.send(
            OutboxMessage(
                "Email",
                customer.email,
                None,
                f"Invoice {invoice.invoice_number}",
                f"You have a new invoice {invoice.invoice_number} for {invoice.total} {invoice.currency}.",
                None,
                state.now,
            )
        )
    _arm_reminders(state, invoice, customer.email if customer else "")
    overdue_at = at_local(invoice.due_date + timedelta(days=1), time(0, 0))
    state.schedule(max(overdue_at, state.now), "invoice_overdue", invoice.invoice_id)


def _arm_reminders(state: PortalState, invoice: Invoice, recipient: str) -> None:
    schedule = invoice.reminder_schedule
    if not schedule.enabled:
        return
    plan = [("BeforeDue", -d) for d in schedule.days_before_due] + [
        ("AfterDue", d) for d in schedule.days_after_due
    ]
    for named_kind, offset in sorted(set(plan), key=lambda item: item[1]):
        kind = "OnDue" if offset == 0 else named_kind
        when = at_local(invoice.due_date + timedelta(days=offset), SEND_TIME)
        if when <= state.now:
            continue
        reminder = Reminder(
            created=state.now,
            modified=state.now,
            seq=0,
            reminder_id=state.new_id(),
            company_id=invoice.company_id,
            invoice_id=invoice.invoice_id,
            kind=kind,
            scheduled_for=when,
            sent_at=None,
            status="Scheduled",
            recipient=recipient,
        )
        state.add(reminder, reminder.company_id, reminder.reminder_id)
        state.schedule(when, "reminder", reminder.reminder_id, "Scheduled")


def send_manual_reminder(state: PortalState, invoice: Invoice) -> Reminder:
    """Send a reminder now for an unpaid sent invoice."""
    if invoice.status not in OPEN_STATUSES:
        raise invalid_state(f"Invoice is {invoice.status.value}; reminders go only for unpaid sent invoices.")
    customer = state.get(Customer, invoice.customer_id)
    reminder = Reminder(
        created=state.now,
        modified=state.now,
        seq=0,
        reminder_id=state.new_id(),
        company_id=invoice.company_id,
        invoice_id=invoice.invoice_id,
        kind="Manual",
        scheduled_for=state.now,
        sent_at=None,
        status="Scheduled",
        recipient=customer.email if customer else "",
    )
    state.add(reminder, reminder.company_id, reminder.reminder_id)
    deliver_reminder(state, reminder, invoice)
    return reminder


def deliver_reminder(state: PortalState, reminder: Reminder, invoice: Invoice | None) -> None:
    """Send a due reminder, or cancel it when the invoice no longer needs chasing."""
    if invoice is None or invoice.status not in OPEN_STATUSES:
        reminder.status = "Cancelled"
    else:
        reminder.status = "Sent"
        reminder.sent_at = state.now
        state.send(
            OutboxMessage(
                "Email",
                reminder.recipient,
                None,
                f"Reminder: invoice {invoice.invoice_number}",
                f"Invoice {invoice.invoice_number} has {invoice.balance_due} {invoice.currency} outstanding, due {invoice.due_date}.",
                None,
                state.now,
            )
        )
    state.touch(reminder, reminder.company_id, reminder.reminder_id)


def void_invoice(state: PortalState, invoice: Invoice) -> None:
    """Void an invoice nothing has been paid on."""
    if invoice.amount_paid > 0 or invoice.status is InvoiceStatus.VOID:
        raise invalid_state(f"Invoice is {invoice.status.value}; it cannot be voided.")
    invoice.delivery = "Void"
    state.touch_invoice(invoice)


def delete_customer(state: PortalState, customer: Customer) -> None:
    """Delete a payer contact for good (the Contacts page's Delete). [choice] Only once nothing
    refers to it: no invoice, recurring plan or payment of it, whatever their status."""
    for kind in ("invoice", "recurringInvoice", "customerPayment"):
        if any(obj.customer_id == customer.customer_id for obj in state.objects[kind].values()):
            raise invalid_state("The contact has invoices or payments; it cannot be deleted.")
    state.remove(customer, customer.company_id, customer.customer_id)


def mark_viewed(state: PortalState, invoice: Invoice) -> None:
    """The customer opened the invoice e-mail."""
    if invoice.delivery != "Sent":
        raise invalid_state("Only a sent invoice can be viewed.")
    invoice.delivery = "Viewed"
    invoice.viewed_date = state.now
    state.touch_invoice(invoice)


def create_recurring(
    state: PortalState,
    customer: Customer,
    line_items: list[LineItem],
    terms: str,
    frequency: str,
    start: date,
    end: date | None,
) -> RecurringInvoice:
    """Start a recurring plan whose first invoice is issued now."""
    if frequency not in ("Weekly", "BiWeekly", "Monthly"):
        raise PortalError(
            400,
            "ValidationFailed",
            "Unknown frequency.",
            [{"field": "recurring.frequency", "message": "Unknown."}],
        )
    plan = RecurringInvoice(
        created=state.now,
        modified=state.now,
        seq=0,
        recurring_invoice_id=state.new_id(),
        company_id=customer.company_id,
        customer_id=customer.customer_id,
        currency=customer.currency,
        line_items=line_items,
        terms=terms,
        frequency=frequency,
        start_date=start,
        end_date=end,
        next_issue_date=next_period(start, frequency),
        status="Active",
    )
    state.add(plan, plan.company_id, plan.recurring_invoice_id)
    _arm_recurring(state, plan)
    return plan


def _arm_recurring(state: PortalState, plan: RecurringInvoice) -> None:
    if plan.next_issue_date is not None:
        state.schedule(
            max(at_local(plan.next_issue_date, RECURRING_TIME), state.now),
            "recurring",
            plan.recurring_invoice_id,
        )


def on_recurring_event(state: PortalState, plan: RecurringInvoice) -> None:
    """Issue and send the next invoice of an active plan."""
    if plan.status != "Active" or plan.next_issue_date is None:
        return
    if plan.end_date is not None and plan.next_issue_date > plan.end_date:
        plan.status = "Completed"
        plan.next_issue_date = None
        state.touch(plan, plan.company_id, plan.recurring_invoice_id)
        return
    customer = state.get(Customer, plan.customer_id)
    if customer is None:
        return
    lines = [
        LineItem(
            state.new_id(), line.description, line.quantity, line.unit_price, line.amount, line.account_code
        )
        for line in plan.line_items
    ]
    invoice = create_invoice(
        state, customer, None, plan.next_issue_date, plan.terms, None, lines, None, "Now", None,
        default_reminders(), plan.recurring_invoice_id, None,
    )  # fmt: skip
    plan.invoice_ids.append(invoice.invoice_id)
    plan.next_issue_date = next_period(plan.next_issue_date, plan.frequency)
    state.touch(plan, plan.company_id, plan.recurring_invoice_id)
    _arm_recurring(state, plan)


def cancel_recurring(state: PortalState, plan: RecurringInvoice) -> None:
    """Stop an active recurring plan."""
    if plan.status != "Active":
        raise invalid_state(f"Recurring invoice is {plan.status}.")
    plan.status = "Cancelled"
    plan.next_issue_date = None
    state.touch(plan, plan.company_id, plan.recurring_invoice_id)


# -- customer payments ----------------------------------------------------------------------------
def match_invoices(
    state: PortalState, customer: Customer, amount: Decimal, invoice_ids: list[str] | None
) -> list[Allocation]:
    """Automatic matching: explicit invoices in order, else an exact-balance invoice, else oldest due first."""
    open_invoices: list[Invoice] = []
    if invoice_ids:
        for invoice_id in invoice_ids:
            invoice = state.get(Invoice, invoice_id)
            if invoice is None or invoice.customer_id != customer.customer_id:
                raise rule(
                    "BusinessRuleViolation",
                    f"Invoice {invoice_id} does not belong to this customer.",
                    "invoiceIds",
                )
            if invoice.status not in OPEN_STATUSES:
                raise rule(
                    "BusinessRuleViolation",
                    f"Invoice {invoice.invoice_number} is {invoice.status.value}.",
                    "invoiceIds",
                )
            open_invoices.append(invoice)
    else:
        candidates = [
            invoice
            for invoice in state.objects["invoice"].values()
            if invoice.customer_id == customer.customer_id and invoice.status in OPEN_STATUSES
        ]
        exact = [
            invoice
            for invoice in candidates
            if invoice.balance_due - _pending_allocated(state, invoice) == amount
        ]
        open_invoices = exact[:1] or sorted(candidates, key=lambda inv: (inv.due_date, inv.invoice_number))
    allocations: list[Allocation] = []
    remaining = amount
    for invoice in open_invoices:
        if remaining <= 0:
            break
        room = invoice.balance_due - _pending_allocated(state, invoice)
        if room <= 0:
            continue
        portion = min(room, remaining)
        allocations.append(Allocation(invoice.invoice_id, portion))
        remaining -= portion
    return allocations


def _pending_allocated(state: PortalState, invoice: Invoice) -> Decimal:
    """What in-flight customer payments will already apply to this invoice."""
    total = ZERO
    for payment in state.objects["customerPayment"].values():
        if payment.customer_id != invoice.customer_id:
            continue
        if payment.status in (CustomerPaymentStatus.COMPLETED, CustomerPaymentStatus.FAILED):
            continue
        total += sum((a.amount for a in payment.allocations if a.invoice_id == invoice.invoice_id), ZERO)
    return total


def create_customer_payment(
    state: PortalState,
    customer: Customer,
    method: str,
    amount: Decimal,
    debit_date: date,
    invoice_ids: list[str] | None,
) -> CustomerPayment:
    """Collect from a customer by PAD (debit on `debit_date`) or card (charged now)."""
    if amount <= 0:
        raise PortalError(
            400,
            "ValidationFailed",
            "Amount must be positive.",
            [{"field": "amount", "message": "Must be positive."}],
        )
    if method == "PreAuthorizedDebit":
        if customer.pad_status != "Active":
            raise rule(
                "BusinessRuleViolation",
                "The customer has no active pre-authorized debit agreement.",
                "method",
            )
        if debit_date < local_date(state.now):
            raise rule("DebitDateInPast", "Debit date is in the past.", "debitDate")
        check_scheduled_date(debit_date, local_date(state.now), "debitDate")
        fee = PAD_FEE
    elif method == "Card":
        if customer.card_last4 is None:
            raise rule("BusinessRuleViolation", "The customer has no card on file.", "method")
        debit_date = local_date(state.now)
        fee = money(amount * CARD_FEE_RATE + CARD_FEE_FIXED)
    else:
        raise PortalError(
            400, "ValidationFailed", "Unknown method.", [{"field": "method", "message": "Unknown method."}]
        )
    payment = CustomerPayment(
        created=state.now,
        modified=state.now,
        seq=0,
        customer_payment_id=state.new_id(),
        company_id=customer.company_id,
        customer_id=customer.customer_id,
        method=method,
        amount=amount,
        currency=customer.currency,
        fee=fee,
        status=CustomerPaymentStatus.PENDING,
        failure_reason=None,
        debit_date=debit_date,
        deposit_date=calendar_for(customer.currency).add_business_days(debit_date, 2),
        allocations=match_invoices(state, customer, amount, invoice_ids),
        accounting=None,
        audit=[AuditEntry(state.now, f"Status changed to {CustomerPaymentStatus.PENDING.value}")],
    )
    state.add(payment, payment.company_id, payment.customer_payment_id)
    if method == "Card":
        advance_customer_payment(state, payment)
    else:
        state.schedule(
            max(at_local(debit_date, SEND_TIME), state.now),
            "customer_payment",
            payment.customer_payment_id,
            "Pending",
        )
    return payment


CUSTOMER_PAYMENT_PATH = [
    CustomerPaymentStatus.PENDING,
    CustomerPaymentStatus.FUNDS_DEBITED,
    CustomerPaymentStatus.CLEARING,
    CustomerPaymentStatus.COMPLETED,
]


def advance_customer_payment(state: PortalState, payment: CustomerPayment) -> None:
    """Move one step along Pending → FundsDebited → Clearing → Completed and schedule the next."""
    position = CUSTOMER_PAYMENT_PATH.index(payment.status)
    payment.status = CUSTOMER_PAYMENT_PATH[position + 1]
    payment.audit.append(AuditEntry(state.now, f"Status changed to {payment.status.value}"))
    state.touch(payment, payment.company_id, payment.customer_payment_id)
    if payment.status is CustomerPaymentStatus.COMPLETED:
        apply_allocations(state, payment)
        schedule_sync(state, "customerPayment", payment.company_id, payment.customer_payment_id)
        return
    calendar = calendar_for(payment.currency)
    days = 1 if payment.status is CustomerPaymentStatus.FUNDS_DEBITED else 2
    due = at_local(calendar.add_business_days(payment.debit_date, days), SEND_TIME)
    state.schedule(max(due, state.now), "customer_payment", payment.customer_payment_id, payment.status.value)


def apply_allocations(state: PortalState, payment: CustomerPayment) -> None:
    """Completed money marks the matched invoices (partially) paid."""
    for allocation in payment.allocations:
        invoice = state.get(Invoice, allocation.invoice_id)
        if invoice is None:
            continue
        invoice.amount_paid = money(min(invoice.total, invoice.amount_paid + allocation.amount))
        state.touch_invoice(invoice)


def on_overdue_event(state: PortalState, invoice: Invoice) -> None:
    """Past the due date with money owed: the invoice becomes Overdue."""
    if invoice.status in OPEN_STATUSES and invoice.balance_due > 0 and not invoice.overdue:
        invoice.overdue = True
        state.touch_invoice(invoice)
