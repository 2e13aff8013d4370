"""Payables: bills, their sequential approval policies, payments, signing authorities and the rails.

Bills use threshold-based multi-level sequential policies; payments use k-of-N signing
authorities of the debit bank account (see README §6).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from plooto_sandbox.accounting import schedule_sync
from plooto_sandbox.business_days import (
    at_local,
    calendar_for,
    check_document_date,
    check_scheduled_date,
    local_date,
)
from plooto_sandbox.errors import PortalError, invalid_state, not_found, rule
from plooto_sandbox.model import (
    DEAD_PAYMENT_STATUSES,
    AccountingLink,
    ApprovalPolicy,
    ApprovalStatus,
    ApprovalStep,
    AuditEntry,
    BankAccount,
    Bill,
    BillStatus,
    FailureReason,
    LineItem,
    Payment,
    PaymentApproval,
    PaymentLine,
    PaymentMethod,
    PaymentStatus,
    Permission,
    User,
    Vendor,
)
from plooto_sandbox.money import ZERO, money
from plooto_sandbox.rails import (
    SETTLEMENT_MORNING,
    SUPPORTED_CURRENCIES,
    earliest_debit_date,
    estimated_arrival,
    fee_for,
    mid_market_rate,
    portal_rate,
    timeline,
)
from plooto_sandbox.store import PortalState


# -- bills ---------------------------------------------------------------------------------------
def policy_for(state: PortalState, company_id: str, currency: str, total: Decimal) -> ApprovalPolicy | None:
    """The policy with the highest threshold not above the bill total."""
    best: ApprovalPolicy | None = None
    for policy in state.objects["approvalPolicy"].values():
        if policy.company_id != company_id or policy.currency != currency:
            continue
        if policy.minimum_amount <= total and (best is None or policy.minimum_amount > best.minimum_amount):
            best = policy
    return best


def approval_steps_for(
    state: PortalState, policy: ApprovalPolicy | None, creator: str | None
) -> list[ApprovalStep]:
    """One step per eligible approver and level; the creator is never an approver of his bill."""
    steps: list[ApprovalStep] = []
    if policy is None:
        return steps
    first_level = True
    for level in policy.levels:
        approvers = [uid for uid in level.approver_user_ids if uid != creator]
        if not approvers:
            continue
        status = ApprovalStatus.APPROVAL_MANDATORY if first_level else ApprovalStatus.AWAITING_PREVIOUS_LEVEL
        steps.extend(ApprovalStep(state.new_id(), level.level, uid, status) for uid in approvers)
        first_level = False
    return steps


def create_bill(
    state: PortalState,
    company_id: str,
    creator: User | None,
    vendor: Vendor,
    bill_number: str,
    currency: str,
    issue_date: date,
    due_date: date,
    line_items: list[LineItem],
    memo: str | None,
    source: str,
    accounting: AccountingLink | None,
) -> Bill:
    """Create a bill and route it through the company's approval policy."""
    if currency not in SUPPORTED_CURRENCIES:
        raise PortalError(
            400,
            "ValidationFailed",
            "Unsupported currency.",
            [{"field": "currency", "message": "Unsupported currency."}],
        )
    if not line_items:
        raise PortalError(
            400,
            "ValidationFailed",
            "A bill needs at least one line item.",
            [{"field": "lineItems", "message": "Required."}],
        )
    today = local_date(state.now)
    check_document_date(issue_date, today, "issueDate")
    check_document_date(due_date, today, "dueDate")
    if due_date < issue_date:
        raise rule("BusinessRuleViolation", "Due date cannot be before the issue date.", "dueDate")
    total = money(sum((line.amount for line in line_items), ZERO))
    if total <= 0:
        raise rule("BusinessRuleViolation", "Bill total must be positive.", "lineItems")
    creator_id = creator.user_id if creator else None
    policy = policy_for(state, company_id, currency, total)
    steps = approval_steps_for(state, policy, creator_id)
    bill = Bill(
        created=state.now,
        modified=state.now,
        seq=0,
        bill_id=state.new_id(),
        company_id=company_id,
        vendor_id=vendor.vendor_id,
        bill_number=bill_number,
        currency=currency,
        issue_date=issue_date,
        due_date=due_date,
        line_items=line_items,
        total=total,
        approval="Pending" if steps else "Approved",
        voided=False,
        source=source,
        memo=memo,
        created_by=creator_id,
        approval_policy_id=policy.approval_policy_id if policy and steps else None,
        approval_steps=steps,
        attachments=[],
        captured=None,
        payment_ids=[],
        accounting=accounting,
        paid_amount=ZERO,
        scheduled_amount=ZERO,
    )
    state.add(bill, company_id, bill.bill_id)
    schedule_sync(state, "bill", company_id, bill.bill_id)
    return bill


def _current_level(bill: Bill) -> int | None:
    pending = [s.level for s in bill.approval_steps if s.status is ApprovalStatus.APPROVAL_MANDATORY]
    return min(pending) if pending else None


def decide_bill(state: PortalState, bill: Bill, user: User, approve: bool, comment: str | None) -> None:
    """Approve or reject the bill's current level as `user`."""
    if bill.status is not BillStatus.APPROVAL_REQUIRED:
        raise invalid_state(f"Bill is {bill.status.value}; it is not awaiting approval.")
    if bill.created_by == user.user_id:
        raise rule("SelfApprovalNotAllowed", "The creator of a bill cannot approve it.")
    level = _current_level(bill)
    mine = [s for s in bill.approval_steps if s.approver_user_id == user.user_id]
    if any(s.status in (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED) for s in mine) and not any(
        s.level == level and s.status is ApprovalStatus.APPROVAL_MANDATORY for s in mine
    ):
        raise PortalError(409, "AlreadyDecided", "You have already decided on this bill.")
    step = next((s for s in mine if s.level == level and s.status is ApprovalStatus.APPROVAL_MANDATORY), None)
    if step is None:
        raise rule("NotAnApprover", "You are not an approver for the current approval level of this bill.")
    step.status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    step.decision_date = state.now
    step.comment = comment
    for other in bill.approval_steps:
        if other is not step and other.level == level and other.status is ApprovalStatus.APPROVAL_MANDATORY:
            other.status = ApprovalStatus.SKIPPED
    if not approve:
        bill.approval = "Rejected"
        for other in bill.approval_steps:
            if other.status is ApprovalStatus.AWAITING_PREVIOUS_LEVEL:
                other.status = ApprovalStatus.SKIPPED
    else:
        later = sorted(
            {s.level for s in bill.approval_steps if s.status is ApprovalStatus.AWAITING_PREVIOUS_LEVEL}
        )
        if later:
            for other in bill.approval_steps:
                if other.level == later[0]:
                    other.status = ApprovalStatus.APPROVAL_MANDATORY
        else:
            bill.approval = "Approved"
    state.touch_bill(bill)


def recompute_bill(state: PortalState, bill: Bill) -> None:
    """Re-derive paid and scheduled amounts from the bill's payments; touch it if they changed."""
    paid = ZERO
    scheduled = ZERO
    for payment_id in bill.payment_ids:
        payment = state.payment(payment_id)
        if payment is None or payment.status in DEAD_PAYMENT_STATUSES:
            continue
        portion = sum((line.amount for line in payment.line_items if line.bill_id == bill.bill_id), ZERO)
        if payment.status is PaymentStatus.COMPLETED:
            paid += portion
        else:
            scheduled += portion
    if paid != bill.paid_amount or scheduled != bill.scheduled_amount:
        bill.paid_amount = money(paid)
        bill.scheduled_amount = money(scheduled)
        state.touch_bill(bill)


# -- payments ------------------------------------------------------------------------------------
def default_method(vendor: Vendor, payee_method_type: str, source: str, destination: str) -> PaymentMethod:
    """What the "New Payable" screen preselects for this payee and currency pair."""
    if source != destination:
        return PaymentMethod.WIRE
    if payee_method_type == "Cheque":
        return PaymentMethod.CHEQUE
    if payee_method_type == "EmailMoneyTransfer":
        return PaymentMethod.EMAIL_MONEY_TRANSFER
    return PaymentMethod.ACH if source == "USD" else PaymentMethod.EFT


def _check_rail(method: PaymentMethod, payee_type: str, source: str, destination: str) -> None:
    if source != destination and method is not PaymentMethod.WIRE:
        raise rule("CurrencyMismatch", "Cross-currency payments must be sent by Wire.", "paymentMethod")
    if method is PaymentMethod.EFT and source != "CAD":
        raise rule("CurrencyMismatch", "EFT pays CAD from a CAD account.", "paymentMethod")
    if method is PaymentMethod.ACH and source != "USD":
        raise rule("CurrencyMismatch", "ACH pays USD from a USD account.", "paymentMethod")
    needs_bank = {
        PaymentMethod.EFT,
        PaymentMethod.ACH,
        PaymentMethod.WIRE,
        PaymentMethod.CARD,
        PaymentMethod.PLOOTO_INSTANT,
    }
    if method in needs_bank and payee_type != "BankAccount":
        raise rule(
            "PaymentMethodUnavailable", "The payee has no bank account for this rail.", "paymentMethod"
        )
    if method is PaymentMethod.CHEQUE and payee_type != "Cheque":
        raise rule(
            "PaymentMethodUnavailable", "The payee has no mailing address for cheques.", "paymentMethod"
        )
    if method is PaymentMethod.EMAIL_MONEY_TRANSFER and payee_type != "EmailMoneyTransfer":
        raise rule("PaymentMethodUnavailable", "The payee has no e-mail transfer method.", "paymentMethod")


def create_payment(
    state: PortalState,
    initiator: User,
    bill: Bill,
    amount: Decimal,
    account: BankAccount,
    requested_debit_date: date,
    method: PaymentMethod | None,
    payee_method_id: str | None,
    memo: str | None,
    external_reference: str | None,
) -> Payment:
    """Validate portal rules and create a payment against one bill."""
    status = bill.status
    if status in (BillStatus.APPROVAL_REQUIRED, BillStatus.REJECTED, BillStatus.VOID):
        raise rule("BillNotApproved", f"Bill is {status.value} and cannot be paid.", "billId")
    if amount <= 0:
        raise PortalError(
            400,
            "ValidationFailed",
            "Amount must be positive.",
            [{"field": "amount", "message": "Must be positive."}],
        )
    if amount > bill.open_balance:
        raise rule(
            "AmountExceedsOpenBalance",
            f"Amount {amount} exceeds the bill's open balance {bill.open_balance}.",
            "amount",
        )
    if account.company_id != bill.company_id:
        raise not_found("Bank account")
    if account.verification_status != "Verified":
        raise rule(
            "BankAccountNotVerified",
            "The debit bank account is still pending validation.",
            "debitBankAccountId",
        )
    vendor = state.get(Vendor, bill.vendor_id)
    if vendor is None:
        raise not_found("Vendor")
    chosen_id = payee_method_id or vendor.default_payment_method_id
    payee_method = next((m for m in vendor.payment_methods if m.payment_method_id == chosen_id), None)
    if payee_method is None:
        raise rule(
            "PaymentMethodUnavailable", "The payee has no such payment method.", "payeePaymentMethodId"
        )
    source, destination = account.currency, bill.currency
    rail = method or default_method(vendor, payee_method.type, source, destination)
    _check_rail(rail, payee_method.type, source, destination)
    today = local_date(state.now)
    if requested_debit_date < today:
        raise rule(
            "DebitDateInPast",
            f"Requested debit date {requested_debit_date} is in the past.",
            "requestedDebitDate",
        )
    check_scheduled_date(requested_debit_date, today, "requestedDebitDate")
    earliest = earliest_debit_date(rail, source, state.now)
    if requested_debit_date == today and earliest > today:
        raise rule(
            "CutOffPassed",
            f"Today's cut-off for {rail.value} has passed; the earliest debit date is {earliest.isoformat()}.",
            "requestedDebitDate",
        )
    exchange_rate = portal_rate(source, destination)
    source_amount = money(amount * exchange_rate)
    if rail is PaymentMethod.PLOOTO_INSTANT:
        company = state.companies[bill.company_id]
        if company.instant_balances.get(source, ZERO) < source_amount:
            raise rule("BusinessRuleViolation", "Plooto Instant balance is insufficient.", "paymentMethod")
    eligible = [uid for uid in account.signing_authorities if uid != initiator.user_id]
    if len(eligible) < account.required_approvals:
        raise rule(
            "BusinessRuleViolation",
            "Not enough signing authorities other than the initiator to approve this payment.",
            "debitBankAccountId",
        )
    payment = Payment(
        created=state.now,
        modified=state.now,
        seq=0,
        payment_id=state.new_id(),
        company_id=bill.company_id,
        line_items=[PaymentLine(bill.bill_id, memo, amount)],
        vendor_id=vendor.vendor_id,
        payee_method_id=payee_method.payment_method_id,
        method=rail,
        amount=amount,
        destination_currency=destination,
        source_currency=source,
        source_amount=source_amount,
        exchange_rate=exchange_rate,
        mid_market_rate=mid_market_rate(source, destination),
        fee=fee_for(rail, source_amount),
        debit_bank_account_id=account.bank_account_id,
        requested_debit_date=requested_debit_date,
        scheduled_debit_date=None,
        debited_date=None,
        estimated_arrival=estimated_arrival(
            rail, source, calendar_for(source).next_business_day_on_or_after(requested_debit_date)
        ),
        completed_date=None,
        status=PaymentStatus.APPROVAL_REQUIRED,
        failure_reason=None,
        hold_reason=None,
        status_before_hold=None,
        memo=memo,
        external_reference=external_reference,
        initiated_by=initiator.user_id,
        approvals=[PaymentApproval(uid, ApprovalStatus.APPROVAL_MANDATORY) for uid in eligible]
        if account.required_approvals
        else [],
        required_approvals=account.required_approvals,
        audit=[AuditEntry(state.now, f"Payment initiated by {initiator.display_name} ({initiator.email})")],
        accounting=None,
    )
    state.add(payment, payment.company_id, payment.payment_id)
    state.index_reference(payment)
    bill.payment_ids.append(payment.payment_id)
    if account.required_approvals == 0:
        release_for_debit(state, payment)
    else:
        payment.audit.append(AuditEntry(state.now, "(Additional approvals required)"))
    recompute_bill(state, bill)
    return payment


def release_for_debit(state: PortalState, payment: Payment) -> None:
    """Approval complete: the payment waits (Pending) for its debit moment."""
    earliest = earliest_debit_date(payment.method, payment.source_currency, state.now)
    calendar = calendar_for(payment.source_currency)
    debit_date = max(payment.requested_debit_date, earliest)
    payment.scheduled_debit_date = calendar.next_business_day_on_or_after(debit_date)
    payment.estimated_arrival = estimated_arrival(
        payment.method, payment.source_currency, payment.scheduled_debit_date
    )
    set_status(state, payment, PaymentStatus.PENDING)
    schedule_next_step(state, payment)


def schedule_next_step(state: PortalState, payment: Payment) -> None:
    """Queue the clock event that moves the payment to its next rail status."""
    if payment.scheduled_debit_date is None:
        return
    steps = timeline(
        payment.method,
        payment.source_currency,
        payment.scheduled_debit_date,
        payment.source_currency != payment.destination_currency,
    )
    statuses = [PaymentStatus.PENDING] + [status for _, status in steps]
    if payment.status not in statuses:
        return
    position = statuses.index(payment.status)
    if position >= len(steps):
        return
    due = max(steps[position][0], state.now)
    state.schedule(due, "payment", payment.payment_id, payment.status.value)


def set_status(state: PortalState, payment: Payment, status: PaymentStatus, note: str | None = None) -> None:
    """Change status, write the audit trail, and keep the bills' balances right."""
    payment.status = status
    # Every change leaves the same machine-readable line; a human note, if any, precedes it.
    if note:
        payment.audit.append(AuditEntry(state.now, note))
    payment.audit.append(AuditEntry(state.now, f"Status changed to {status.value}"))
    state.touch_payment(payment)
    if status is PaymentStatus.COMPLETED:
        schedule_sync(state, "payment", payment.company_id, payment.payment_id)
    for line in payment.line_items:
        bill = state.bill(line.bill_id)
        if bill is not None:
            recompute_bill(state, bill)


def _payee_return_reason(state: PortalState, payment: Payment) -> FailureReason | None:
    vendor = state.get(Vendor, payment.vendor_id)
    if vendor is None:
        return None
    method = next((m for m in vendor.payment_methods if m.payment_method_id == payment.payee_method_id), None)
    return method.return_reason if method else None


def on_payment_event(state: PortalState, payment: Payment, expected: str | None) -> None:
    """A scheduled step fired: move the payment along unless something changed it meanwhile."""
    if expected is not None and payment.status.value != expected:
        return
    steps = timeline(
        payment.method,
        payment.source_currency,
        payment.scheduled_debit_date or payment.requested_debit_date,
        payment.source_currency != payment.destination_currency,
    )
    statuses = [PaymentStatus.PENDING] + [status for _, status in steps]
    if payment.status not in statuses:
        return
    target = statuses[statuses.index(payment.status) + 1]
    if target is PaymentStatus.FUNDS_DEBITED:
        account = state.get(BankAccount, payment.debit_bank_account_id)
        if account is not None and account.nsf and payment.method is not PaymentMethod.PLOOTO_INSTANT:
            fail_payment(state, payment, PaymentStatus.FAILED, FailureReason.INSUFFICIENT_FUNDS)
            return
        payment.debited_date = local_date(state.now)
        if payment.method is PaymentMethod.PLOOTO_INSTANT:
            balances = state.companies[payment.company_id].instant_balances
            balances[payment.source_currency] = (
                balances.get(payment.source_currency, ZERO) - payment.source_amount
            )
    if target is PaymentStatus.COMPLETED:
        reason = _payee_return_reason(state, payment)
        if reason is not None:
            fail_payment(state, payment, PaymentStatus.RETURNED, reason)
            return
        payment.completed_date = local_date(state.now)
    set_status(state, payment, target)
    schedule_next_step(state, payment)


def fail_payment(state: PortalState, payment: Payment, status: PaymentStatus, reason: FailureReason) -> None:
    """The bank refused (Failed) or sent back (Returned) the payment."""
    payment.failure_reason = reason
    set_status(state, payment, status, f"Payment {status.value.lower()}: {reason.value}")


def complete_payment(state: PortalState, payment: Payment) -> None:
    """Force completion (control API: "the bank confirmed it")."""
    if payment.status in DEAD_PAYMENT_STATUSES or payment.status is PaymentStatus.COMPLETED:
        raise invalid_state(f"Payment is {payment.status.value}.")
    if payment.scheduled_debit_date is None:
        payment.scheduled_debit_date = local_date(state.now)
    payment.debited_date = payment.debited_date or local_date(state.now)
    payment.completed_date = local_date(state.now)
    set_status(state, payment, PaymentStatus.COMPLETED)


def claim_payment(state: PortalState, payment: Payment) -> None:
    """The e-mail transfer payee entered banking details: complete next business morning."""
    if (
        payment.method is not PaymentMethod.EMAIL_MONEY_TRANSFER
        or payment.status is not PaymentStatus.CLEARING
    ):
        raise invalid_state("Only an e-mail money transfer in Clearing can be claimed.")
    payment.claimed = True
    calendar = calendar_for(payment.source_currency)
    day = calendar.add_business_days(local_date(state.now), 1)
    payment.estimated_arrival = day
    state.touch_payment(payment)
    state.schedule(at_local(day, SETTLEMENT_MORNING), "payment_claimed", payment.payment_id, "Clearing")


def on_claim_event(state: PortalState, payment: Payment) -> None:
    """The claimed e-mail transfer is deposited."""
    if payment.status is PaymentStatus.CLEARING:
        payment.completed_date = local_date(state.now)
        set_status(state, payment, PaymentStatus.COMPLETED, "Payee claimed the payment; deposited")


def decide_payment(
    state: PortalState, payment: Payment, user: User, approve: bool, permissions: frozenset[Permission]
) -> None:
    """A signing authority approves or rejects; k approvals release the payment."""
    if Permission.APPROVE_PAYMENTS not in permissions:
        raise PortalError(403, "PermissionDenied", "You do not have permission to approve payments.")
    if payment.status is not PaymentStatus.APPROVAL_REQUIRED:
        raise invalid_state(f"Payment is {payment.status.value}; it is not awaiting approval.")
    if payment.initiated_by == user.user_id:
        raise rule("SelfApprovalNotAllowed", "The initiator of a payment cannot approve it.")
    slot = next((a for a in payment.approvals if a.approver_user_id == user.user_id), None)
    if slot is None:
        raise rule("NotAnApprover", "You are not a signing authority on the debit bank account.")
    if slot.status is not ApprovalStatus.APPROVAL_MANDATORY:
        raise PortalError(409, "AlreadyDecided", "You have already decided on this payment.")
    slot.status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    slot.decision_date = state.now
    verb = "approved" if approve else "rejected"
    payment.audit.append(AuditEntry(state.now, f"Payment {verb} by {user.display_name} ({user.email})"))
    if not approve:
        _skip_open_slots(payment)
        set_status(state, payment, PaymentStatus.REJECTED)
        return
    approved = sum(1 for a in payment.approvals if a.status is ApprovalStatus.APPROVED)
    if approved >= payment.required_approvals:
        _skip_open_slots(payment)
        release_for_debit(state, payment)
    else:
        state.touch_payment(payment)


def _skip_open_slots(payment: Payment) -> None:
    for other in payment.approvals:
        if other.status is ApprovalStatus.APPROVAL_MANDATORY:
            other.status = ApprovalStatus.SKIPPED


def cancel_payment(state: PortalState, payment: Payment, deleted: bool) -> None:
    """Cancel or delete a payment that has not been debited yet."""
    allowed = (PaymentStatus.APPROVAL_REQUIRED, PaymentStatus.PENDING, PaymentStatus.ON_HOLD)
    if payment.status not in allowed:
        raise invalid_state(
            f"Payment is {payment.status.value}; only payments not yet debited can be cancelled."
        )
    _skip_open_slots(payment)
    set_status(state, payment, PaymentStatus.DELETED if deleted else PaymentStatus.CANCELLED)


def delete_bill(state: PortalState, bill: Bill) -> None:
    """Delete a bill for good (the Bills page's Delete). [choice] Only while no payment of it is in
    progress or completed: its money trail must stay readable. Dead payments keep its id."""
    for payment_id in bill.payment_ids:
        payment = state.payment(payment_id)
        if payment is not None and payment.status not in DEAD_PAYMENT_STATUSES:
            raise invalid_state(
                f"The bill has a payment that is {payment.status.value}; it cannot be deleted."
            )
    state.remove(bill, bill.company_id, bill.bill_id)


def delete_vendor(state: PortalState, vendor: Vendor) -> None:
    """Delete a payee contact for good (the Contacts page's Delete). [choice] Only once nothing
    refers to it: no bill and no payment, whatever their status."""
    if any(bill.vendor_id == vendor.vendor_id for bill in state.objects["bill"].values()) or any(
        payment.vendor_id == vendor.vendor_id for payment in state.objects["payment"].values()
    ):
        raise invalid_state("The contact has bills or payments; it cannot be deleted.")
    state.remove(vendor, vendor.company_id, vendor.vendor_id)


def recall_payment(state: PortalState, payment: Payment) -> None:
    """Pull back an unclaimed e-mail transfer into Plooto Instant."""
    if (
        payment.method is not PaymentMethod.EMAIL_MONEY_TRANSFER
        or payment.status is not PaymentStatus.CLEARING
    ):
        raise invalid_state("Only an unclaimed e-mail money transfer in Clearing can be recalled.")
    balances = state.companies[payment.company_id].instant_balances
    balances[payment.source_currency] = balances.get(payment.source_currency, ZERO) + payment.source_amount
    set_status(state, payment, PaymentStatus.RECALLED, "Payment recalled; funds returned to Plooto Instant")


def hold_payment(state: PortalState, payment: Payment, reason: str) -> None:
    """Compliance/security hold: the lifecycle freezes until released."""
    if payment.status in DEAD_PAYMENT_STATUSES or payment.status in (
        PaymentStatus.COMPLETED,
        PaymentStatus.ON_HOLD,
    ):
        raise invalid_state(f"Payment is {payment.status.value}.")
    payment.status_before_hold = payment.status
    payment.hold_reason = reason
    set_status(
        state,
        payment,
        PaymentStatus.ON_HOLD,
        f"This payment is on hold due to the following security issue: {reason}",
    )


def release_payment(state: PortalState, payment: Payment) -> None:
    """End a hold: back to the previous status, lifecycle resumes."""
    if payment.status is not PaymentStatus.ON_HOLD or payment.status_before_hold is None:
        raise invalid_state("Payment is not on hold.")
    previous = payment.status_before_hold
    payment.status_before_hold = None
    payment.hold_reason = None
    set_status(state, payment, previous, "Hold released")
    schedule_next_step(state, payment)
