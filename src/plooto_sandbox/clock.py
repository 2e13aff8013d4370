"""The sandbox clock: moving it forward runs every scheduled portal event that falls due, in order."""

from __future__ import annotations

from datetime import datetime, timedelta

from plooto_sandbox import accounting, payables, receivables
from plooto_sandbox.business_days import CANADA, at_local, local_date, local_time
from plooto_sandbox.errors import PortalError
from plooto_sandbox.model import CustomerPayment, Invoice, Payment, RecurringInvoice, Reminder
from plooto_sandbox.store import PortalState, ScheduledEvent


def _dispatch(state: PortalState, event: ScheduledEvent) -> None:
    if event.action == "payment":
        payment = state.get(Payment, event.object_id)
        if payment is not None:
            payables.on_payment_event(state, payment, event.expected)
    elif event.action == "payment_claimed":
        payment = state.get(Payment, event.object_id)
        if payment is not None:
            payables.on_claim_event(state, payment)
    elif event.action == "invoice_send":
        invoice = state.get(Invoice, event.object_id)
        if invoice is not None and invoice.delivery == "Draft" and invoice.scheduled_send_date is not None:
            receivables.send_invoice(state, invoice)
    elif event.action == "invoice_overdue":
        invoice = state.get(Invoice, event.object_id)
        if invoice is not None:
            receivables.on_overdue_event(state, invoice)
    elif event.action == "reminder":
        reminder = state.get(Reminder, event.object_id)
        if reminder is not None and reminder.status == "Scheduled":
            receivables.deliver_reminder(state, reminder, state.get(Invoice, reminder.invoice_id))
    elif event.action == "recurring":
        plan = state.get(RecurringInvoice, event.object_id)
        if plan is not None:
            receivables.on_recurring_event(state, plan)
    elif event.action == "accounting_sync" and event.expected is not None:
        accounting.on_sync_event(state, event.expected, event.object_id)
    elif event.action == "customer_payment":
        collected = state.get(CustomerPayment, event.object_id)
        if collected is not None and collected.status.value == event.expected:
            receivables.advance_customer_payment(state, collected)


def advance_to(state: PortalState, target: datetime) -> int:
    """Run every event due up to `target` (each at its own instant), then stop the clock there."""
    target = target.replace(microsecond=0)
    if target < state.now:
        raise PortalError(409, "InvalidState", "The sandbox clock cannot move backwards.")
    processed = 0
    while True:
        event = state.pop_due(target)
        if event is None:
            break
        state.now = max(state.now, event.due)
        _dispatch(state, event)
        processed += 1
    state.now = target
    return processed


def business_days_later(now: datetime, days: int) -> datetime:
    """Same Toronto wall-clock time `days` Canadian business days later."""
    day = CANADA.add_business_days(local_date(now), days)
    return at_local(day, local_time(now))


def advance(state: PortalState, days: int = 0, hours: float = 0, minutes: float = 0) -> int:
    """Move the clock by business days and/or hours and minutes."""
    target = business_days_later(state.now, days) if days else state.now
    target += timedelta(hours=hours, minutes=minutes)
    return advance_to(state, target)
