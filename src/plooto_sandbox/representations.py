"""The portal's JSON shapes: camelCase .NET-style names, masked account numbers, 2-dp money.

A `shape_change` fault renames one field of one object type for the current request (drift
testing); `apply_drift` is the single place that happens.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from plooto_sandbox.model import (
    DISPLAY_STATUS,
    AccountingLink,
    ApprovalPolicy,
    BankAccount,
    Bill,
    Company,
    Customer,
    CustomerPayment,
    Invoice,
    LineItem,
    Membership,
    PayeeMethod,
    Payment,
    PaymentMethod,
    RecurringInvoice,
    Reminder,
    User,
    Vendor,
)
from plooto_sandbox.money import money, precise_timestamp, rate, timestamp
from plooto_sandbox.store import PortalState

JSON = dict[str, Any]

# objectType -> list of (fromField, toField), set per request by the fault layer.
FIELD_RENAMES: ContextVar[dict[str, list[tuple[str, str]]] | None] = ContextVar("field_renames", default=None)


def apply_drift(object_type: str, body: JSON) -> JSON:
    """Apply any active shape_change renames to one object."""
    renames = FIELD_RENAMES.get()
    if renames and object_type in renames:
        for old, new in renames[object_type]:
            if old in body:
                body[new] = body.pop(old)
    return body


def mask(number: str | None) -> str | None:
    """`*****1234`: the portal never shows more than the last four digits."""
    if not number:
        return None
    return "*****" + number[-4:]


def accounting(link: AccountingLink | None) -> JSON | None:
    """`accountingIds` of a synced object."""
    if link is None:
        return None
    return {
        "provider": link.provider,
        "externalId": link.external_id,
        "syncStatus": link.sync_status,
        "lastSyncedAt": timestamp(link.last_synced_at) if link.last_synced_at else None,
    }


def _stamps(created: Any, modified: Any) -> JSON:
    return {"createdDate": timestamp(created), "lastModified": precise_timestamp(modified)}


def company(state: PortalState, item: Company, member: Membership, detail: bool = False) -> JSON:
    # "Outstanding Items" on the company selector are verification items (domain §1.3).
    """A company as the caller sees it (with his role and permissions)."""
    outstanding = sum(
        1
        for account in state.objects["bankAccount"].values()
        if account.company_id == item.company_id and account.verification_status != "Verified"
    )
    body: JSON = {
        "companyId": item.company_id,
        "name": item.name,
        "country": item.country,
        "baseCurrency": item.base_currency,
        "status": item.status,
        "role": member.role.value,
        "permissions": sorted(p.value for p in member.permissions),
        "outstandingItems": outstanding,
        "accountingProvider": item.accounting_provider,
        "isAccountingFirm": item.is_accounting_firm,
    }
    if detail:
        body["plootoInstantBalances"] = [
            {"currency": currency, "balance": money(balance)}
            for currency, balance in sorted(item.instant_balances.items())
        ]
    return apply_drift("company", body)


def user(item: User, member: Membership) -> JSON:
    """A company member."""
    return apply_drift(
        "user",
        {
            "userId": item.user_id,
            "email": item.email,
            "firstName": item.first_name,
            "lastName": item.last_name,
            "role": member.role.value,
            "permissions": sorted(p.value for p in member.permissions),
        },
    )


def bank_account(item: BankAccount) -> JSON:
    """A funding account, number masked."""
    return apply_drift(
        "bankAccount",
        {
            "bankAccountId": item.bank_account_id,
            "name": item.name,
            "institutionName": item.institution_name,
            "currency": item.currency,
            "accountNumberMasked": mask(item.account_number),
            "verificationStatus": item.verification_status,
            "signingAuthorities": list(item.signing_authorities),
            "requiredApprovals": item.required_approvals,
            **_stamps(item.created, item.modified),
        },
    )


def approval_policy(item: ApprovalPolicy) -> JSON:
    """A bill approval policy."""
    return apply_drift(
        "approvalPolicy",
        {
            "approvalPolicyId": item.approval_policy_id,
            "name": item.name,
            "appliesTo": "Bill",
            "currency": item.currency,
            "minimumAmount": money(item.minimum_amount),
            "levels": [
                {"level": lv.level, "approverUserIds": list(lv.approver_user_ids)} for lv in item.levels
            ],
            **_stamps(item.created, item.modified),
        },
    )


def _payee_method(item: PayeeMethod) -> JSON:
    return {
        "paymentMethodId": item.payment_method_id,
        "type": item.type,
        "currency": item.currency,
        "institutionName": item.institution_name,
        "accountNumberMasked": mask(item.account_number),
        "accountHolderName": item.account_holder_name,
        "mailingAddress": item.mailing_address,
    }


def vendor(item: Vendor) -> JSON:
    """A payee, payment methods masked."""
    return apply_drift(
        "vendor",
        {
            "vendorId": item.vendor_id,
            "displayName": item.display_name,
            "email": item.email,
            "currency": item.currency,
            "isPlootoNetworkConnected": item.network_connected,
            "paymentMethods": [_payee_method(m) for m in item.payment_methods],
            "defaultPaymentMethodId": item.default_payment_method_id,
            "accountingIds": accounting(item.accounting),
            **_stamps(item.created, item.modified),
        },
    )


def customer(item: Customer) -> JSON:
    """A payer."""
    return apply_drift(
        "customer",
        {
            "customerId": item.customer_id,
            "displayName": item.display_name,
            "email": item.email,
            "currency": item.currency,
            "padAgreementStatus": item.pad_status,
            "cardOnFileMasked": f"**** {item.card_last4}" if item.card_last4 else None,
            "accountingIds": accounting(item.accounting),
            **_stamps(item.created, item.modified),
        },
    )


def _line(item: LineItem, with_account: bool = True) -> JSON:
    body: JSON = {
        "lineItemId": item.line_item_id,
        "description": item.description,
        "quantity": item.quantity,
        "unitPrice": money(item.unit_price),
        "amount": money(item.amount),
    }
    if with_account:
        body["accountCode"] = item.account_code
    return body


def _display_name(state: PortalState, user_id: str | None) -> str | None:
    if user_id is None:
        return None
    found = state.users.get(user_id)
    return found.display_name if found else None


def bill(state: PortalState, item: Bill) -> JSON:
    """A bill with its lines, balances, approval steps and captured document."""
    captured = item.captured
    return apply_drift(
        "bill",
        {
            "billId": item.bill_id,
            "vendorId": item.vendor_id,
            "billNumber": item.bill_number,
            "currency": item.currency,
            "issueDate": item.issue_date.isoformat(),
            "dueDate": item.due_date.isoformat(),
            "lineItems": [_line(line) for line in item.line_items],
            "totalAmount": money(item.total),
            "paidAmount": money(item.paid_amount),
            "scheduledAmount": money(item.scheduled_amount),
            "openBalance": money(item.open_balance),
            "status": item.status.value,
            "source": item.source,
            "memo": item.memo,
            "createdByUserId": item.created_by,
            "approvalPolicyId": item.approval_policy_id,
            "approvalSteps": [
                {
                    "stepId": step.step_id,
                    "level": step.level,
                    "approverUserId": step.approver_user_id,
                    "approverDisplayName": _display_name(state, step.approver_user_id),
                    "status": step.status.value,
                    "decisionDate": timestamp(step.decision_date) if step.decision_date else None,
                    "comment": step.comment,
                }
                for step in item.approval_steps
            ],
            "attachments": [
                {
                    "attachmentId": a.attachment_id,
                    "fileName": a.file_name,
                    "contentType": a.content_type,
                    "sizeBytes": a.size_bytes,
                    "uploadedDate": timestamp(a.uploaded),
                }
                for a in item.attachments
            ],
            "capturedDocument": None
            if captured is None
            else {
                "documentId": captured.document_id,
                "fileName": captured.file_name,
                "extractedFields": {
                    name: {"value": f.value, "confidence": f.confidence}
                    for name, f in captured.fields.items()
                },
                "overallConfidence": captured.overall_confidence,
                "ocrStatus": "Completed",
            },
            "paymentIds": list(item.payment_ids),
            "accountingIds": accounting(item.accounting),
            **_stamps(item.created, item.modified),
        },
    )


def _pay_from(state: PortalState, item: Payment) -> JSON:
    """The payment's "Pay From" (View Payment, Additional Details: `Main Account / *********863`):
    the account the money leaves, number masked; an Instant payment's is the wallet, with none."""
    if item.method == PaymentMethod.PLOOTO_INSTANT:
        return {"name": "Plooto Instant", "accountNumberMasked": None}
    account = state.get(BankAccount, item.debit_bank_account_id)
    assert account is not None  # checked when the payment was created; accounts are never removed
    return {"name": account.name, "accountNumberMasked": mask(account.account_number)}


def payment(state: PortalState, item: Payment) -> JSON:
    """A payable payment with FX, dates, approvals and audit trail."""
    payee = state.get(Vendor, item.vendor_id)
    return apply_drift(
        "payment",
        {
            "paymentId": item.payment_id,
            "billIds": [line.bill_id for line in item.line_items],
            "lineItems": [
                {"billId": ln.bill_id, "memo": ln.memo, "amount": money(ln.amount)} for ln in item.line_items
            ],
            "payeeId": item.vendor_id,
            "payeeName": payee.display_name if payee else None,
            "payeePaymentMethodId": item.payee_method_id,
            "paymentMethod": item.method.value,
            "amount": money(item.amount),
            "destinationCurrency": item.destination_currency,
            "sourceCurrency": item.source_currency,
            "sourceAmount": money(item.source_amount),
            "exchangeRate": rate(item.exchange_rate),
            "midMarketRate": rate(item.mid_market_rate),
            "feeAmount": money(item.fee),
            "feeCurrency": item.source_currency,
            "debitBankAccountId": item.debit_bank_account_id,
            "payFrom": _pay_from(state, item),
            "requestedDebitDate": item.requested_debit_date.isoformat(),
            "scheduledDebitDate": item.scheduled_debit_date.isoformat()
            if item.scheduled_debit_date
            else None,
            "debitedDate": item.debited_date.isoformat() if item.debited_date else None,
            "estimatedArrivalDate": item.estimated_arrival.isoformat() if item.estimated_arrival else None,
            "completedDate": item.completed_date.isoformat() if item.completed_date else None,
            "status": item.status.value,
            "displayStatus": DISPLAY_STATUS.get(item.status, item.status.value),
            "failureReason": item.failure_reason.value if item.failure_reason else None,
            "holdReason": item.hold_reason,
            "memo": item.memo,
            "externalReference": item.external_reference,
            "initiatedByUserId": item.initiated_by,
            "approvals": [
                {
                    "approverUserId": a.approver_user_id,
                    "approverDisplayName": _display_name(state, a.approver_user_id),
                    "status": a.status.value,
                    "decisionDate": timestamp(a.decision_date) if a.decision_date else None,
                }
                for a in item.approvals
            ],
            "requiredApprovals": item.required_approvals,
            "auditTrail": [
                {"timestamp": timestamp(e.timestamp), "description": e.description} for e in item.audit
            ],
            "accountingIds": accounting(item.accounting),
            **_stamps(item.created, item.modified),
        },
    )


def invoice(item: Invoice) -> JSON:
    """A receivable invoice."""
    schedule = item.reminder_schedule
    return apply_drift(
        "invoice",
        {
            "invoiceId": item.invoice_id,
            "invoiceNumber": item.invoice_number,
            "customerId": item.customer_id,
            "currency": item.currency,
            "issueDate": item.issue_date.isoformat(),
            "dueDate": item.due_date.isoformat(),
            "terms": item.terms,
            "lineItems": [_line(line, with_account=False) for line in item.line_items],
            "totalAmount": money(item.total),
            "amountPaid": money(item.amount_paid),
            "balanceDue": money(item.balance_due),
            "status": item.status.value,
            "sentDate": timestamp(item.sent_date) if item.sent_date else None,
            "viewedDate": timestamp(item.viewed_date) if item.viewed_date else None,
            "scheduledSendDate": item.scheduled_send_date.isoformat() if item.scheduled_send_date else None,
            "reminderSchedule": {
                "enabled": schedule.enabled,
                "daysBeforeDue": list(schedule.days_before_due),
                "daysAfterDue": list(schedule.days_after_due),
            },
            "recurringInvoiceId": item.recurring_invoice_id,
            "memo": item.memo,
            "accountingIds": accounting(item.accounting),
            **_stamps(item.created, item.modified),
        },
    )


def recurring_invoice(item: RecurringInvoice) -> JSON:
    """A recurring invoice plan."""
    return apply_drift(
        "recurringInvoice",
        {
            "recurringInvoiceId": item.recurring_invoice_id,
            "customerId": item.customer_id,
            "currency": item.currency,
            "lineItems": [_line(line, with_account=False) for line in item.line_items],
            "terms": item.terms,
            "frequency": item.frequency,
            "startDate": item.start_date.isoformat(),
            "endDate": item.end_date.isoformat() if item.end_date else None,
            "nextIssueDate": item.next_issue_date.isoformat() if item.next_issue_date else None,
            "status": item.status,
            "invoiceIds": list(item.invoice_ids),
            **_stamps(item.created, item.modified),
        },
    )


def reminder(item: Reminder) -> JSON:
    """A scheduled or sent payment reminder."""
    return apply_drift(
        "reminder",
        {
            "reminderId": item.reminder_id,
            "invoiceId": item.invoice_id,
            "kind": item.kind,
            "scheduledFor": timestamp(item.scheduled_for),
            "sentAt": timestamp(item.sent_at) if item.sent_at else None,
            "status": item.status,
            "channel": "Email",
            "recipient": item.recipient,
            **_stamps(item.created, item.modified),
        },
    )


def customer_payment(item: CustomerPayment) -> JSON:
    """Money collected from a customer, with its invoice allocations."""
    return apply_drift(
        "customerPayment",
        {
            "customerPaymentId": item.customer_payment_id,
            "customerId": item.customer_id,
            "method": item.method,
            "amount": money(item.amount),
            "currency": item.currency,
            "feeAmount": money(item.fee),
            "netAmount": money(item.amount - item.fee),
            "status": item.status.value,
            "failureReason": item.failure_reason,
            "debitDate": item.debit_date.isoformat(),
            "depositDate": item.deposit_date.isoformat() if item.deposit_date else None,
            "allocations": [{"invoiceId": a.invoice_id, "amount": money(a.amount)} for a in item.allocations],
            "matchStatus": item.match_status,
            "auditTrail": [
                {"timestamp": timestamp(e.timestamp), "description": e.description} for e in item.audit
            ],
            "accountingIds": accounting(item.accounting),
            **_stamps(item.created, item.modified),
        },
    )
