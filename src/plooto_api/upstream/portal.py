"""The Plooto portal, described as data: pages, forms, cookies, API paths, shapes, statuses, feeds.

Everything this adapter knows about the portal lives here; the mechanics (session, throttle,
retries, drift checking, the record builder) are in the private modules and read this one.
When the portal changes, this is the module to change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from plooto_api.upstream._convert import (
    Context,
    date_as_timestamp,
    money,
    parse_date,
    parse_timestamp,
    ref,
    snake,
)
from plooto_api.upstream._errors import UpstreamChanged
from plooto_api.upstream._models import Feed, UpstreamRecord, UpstreamRef
from plooto_api.upstream._shapes import ListOf, Shape, Spec, check_shape

# --- HTML login ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HtmlForm:
    """A form of the portal's HTML login pages."""

    form_id: str
    token_field: str = "__RequestVerificationToken"


LOGIN_PATH = "/login"
LOGIN_FORM = HtmlForm("login-form")
LOGIN_USER_FIELD = "email"
LOGIN_PASSWORD_FIELD = "passphrase"
LOGIN_USER_SELECTOR = "#email"  # for the real-browser login
LOGIN_PASSWORD_SELECTOR = "#passphrase"
LOGIN_SUBMIT_TEXT = "Sign In"

MFA_PATH = "/mfa"
MFA_RESEND_PATH = "/mfa/resend"  # the MFA page's "send a new code" (SMS), with the form's token
MFA_FORM = HtmlForm("mfa-form")
MFA_CODE_FIELD = "code"
MFA_CODE_SELECTOR = "#code"
MFA_TRUST_FIELD = "trustDevice"
MFA_TRUST_VALUE = "true"
MFA_METHOD_ATTR = "data-mfa-method"
MFA_METHODS = {"Totp": "totp", "Sms": "sms"}

# Where a login / MFA lands when the portal published terms of service the user has not accepted:
# only the person accepts them (a legal agreement), never the gateway. Its API answers
# 403 ERROR_TERMS_NOT_ACCEPTED meanwhile.
TERMS_PATH = "/terms"

# Where a successful login / MFA lands; anything else on the same host is a signed-in page.
SIGNED_IN_PATHS = ("/select-company", "/dashboard", "/company")
ERROR_CODE_ATTR = "data-error-code"
LOGIN_ERROR_INVALID_CREDENTIALS = "InvalidCredentials"
LOGIN_ERROR_LOCKED = "AccountLocked"
LOGIN_ERROR_TOKEN = "AntiforgeryTokenInvalid"
MFA_ERROR_INVALID_CODE = "InvalidCode"
LOCKED_UNTIL_ATTR = "data-locked-until"  # read if the page carries it

SESSION_COOKIE = ".Plooto.Session"
XSRF_COOKIE = "XSRF-TOKEN"
XSRF_HEADER = "X-XSRF-TOKEN"
TRUSTED_DEVICE_COOKIE = ".Plooto.TrustedDevice"

# --- JSON API: common rules ---------------------------------------------------------------------

SESSION_PATH = "/api/session"
ANTIFORGERY_PATH = "/api/antiforgery/token"
COMPANIES_PATH = "/api/companies"
COMPANY_PATH = "/api/companies/{company}"

PAGE_NUMBER_PARAM = "pageNumber"
PAGE_SIZE_PARAM = "pageSize"
MODIFIED_SINCE_PARAM = "modifiedSince"
MAX_PAGE_SIZE = 500
PAGE_ITEMS = "items"
PAGE_NUMBER = "pageNumber"
PAGE_TOTAL_COUNT = "totalCount"
PAGE_TOTAL_PAGES = "totalPages"

ERROR_CODE_FIELD = "errorCode"
ERROR_MESSAGE_FIELD = "message"
ERROR_VALIDATION_FIELD = "validationErrors"
ERROR_NOT_AUTHENTICATED = "NotAuthenticated"
ERROR_MFA_REQUIRED = "MfaRequired"
ERROR_XSRF_INVALID = "AntiforgeryTokenInvalid"
ERROR_TERMS_NOT_ACCEPTED = "TermsNotAccepted"  # 403: new terms of service await the user (TERMS_PATH)
ERROR_PERMISSION_DENIED = "PermissionDenied"
ERROR_OBJECT_NOT_FOUND = "NotFound"
ERROR_COMPANY_NOT_FOUND = "CompanyNotFound"  # the company does not exist, or this login cannot reach it
ERROR_NOT_FOUND = (ERROR_OBJECT_NOT_FOUND, ERROR_COMPANY_NOT_FOUND)
RETRY_AFTER_HEADER = "Retry-After"

LAST_MODIFIED = "lastModified"
CREATED = "createdDate"


def timestamp_param(value: datetime) -> str:
    """The portal's timestamp format for query parameters: `YYYY-MM-DDTHH:MM:SS.ffffffZ` UTC
    (`lastModified` carries microseconds; sending fewer would re-read a whole second's changes)."""
    return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


# --- shapes (drift detection) -------------------------------------------------------------------

ACCOUNTING = Shape(
    "accountingIds",
    {"provider": "str", "externalId": "str", "syncStatus": "str", "lastSyncedAt": "ts?"},
)
_STAMPS = {LAST_MODIFIED: "ts", CREATED: "ts"}

PAGE = Shape(
    "page",
    {
        PAGE_ITEMS: "list",
        PAGE_NUMBER: "int",
        "pageSize": "int",
        PAGE_TOTAL_COUNT: "int",
        PAGE_TOTAL_PAGES: "int",
    },
)
SESSION = Shape(
    "session",
    {
        "userId": "str", "email": "str", "firstName": "str?", "lastName": "str?", "mfaMethod": "str?",
        "selectedCompanyId": "str?", "idleExpiresAt": "ts", "absoluteExpiresAt": "ts",
    },
)  # fmt: skip
_COMPANY_FIELDS: dict[str, Spec] = {
    "companyId": "str", "name": "str", "country": "str", "baseCurrency": "str", "status": "str",
    "role": "str", "permissions": ListOf("str"), "outstandingItems": "int",
    "accountingProvider": "str?", "isAccountingFirm": "bool",
}  # fmt: skip
COMPANY = Shape("company", _COMPANY_FIELDS)  # as the companies' listing has it
# The company's own page adds its Plooto Instant wallets: a page without them is drift, not a
# company whose wallets are all gone.
COMPANY_PAGE = Shape(
    "company",
    {
        **_COMPANY_FIELDS,
        "plootoInstantBalances": ListOf(Shape("instantBalance", {"currency": "str", "balance": "number"})),
    },
)
USER = Shape(
    "user",
    {
        "userId": "str",
        "email": "str",
        "firstName": "str?",
        "lastName": "str?",
        "role": "str",
        "permissions": ListOf("str"),
    },
)
BANK_ACCOUNT = Shape(
    "bankAccount",
    {
        "bankAccountId": "str", "name": "str", "institutionName": "str?", "currency": "str",
        "accountNumberMasked": "str?", "verificationStatus": "str", "signingAuthorities": ListOf("str"),
        "requiredApprovals": "int", **_STAMPS,
    },
)  # fmt: skip
APPROVAL_POLICY = Shape(
    "approvalPolicy",
    {
        "approvalPolicyId": "str", "name": "str", "appliesTo": "str", "currency": "str", "minimumAmount": "number",
        "levels": ListOf(Shape("approvalLevel", {"level": "int", "approverUserIds": ListOf("str")})), **_STAMPS,
    },
)  # fmt: skip
PAYEE_METHOD = Shape(
    "payeePaymentMethod",
    {
        "paymentMethodId": "str", "type": "str", "currency": "str?", "institutionName": "str?",
        "accountNumberMasked": "str?", "accountHolderName": "str?", "mailingAddress": "any",
    },
)  # fmt: skip
VENDOR = Shape(
    "vendor",
    {
        "vendorId": "str", "displayName": "str", "email": "str?", "currency": "str",
        "isPlootoNetworkConnected": "bool", "paymentMethods": ListOf(PAYEE_METHOD),
        "defaultPaymentMethodId": "str?", "accountingIds": "dict?", **_STAMPS,
    },
)  # fmt: skip
CUSTOMER = Shape(
    "customer",
    {
        "customerId": "str", "displayName": "str", "email": "str?", "currency": "str",
        "padAgreementStatus": "str", "cardOnFileMasked": "str?", "accountingIds": "dict?", **_STAMPS,
    },
)  # fmt: skip
LINE_ITEM = Shape(
    "lineItem",
    {
        "lineItemId": "str", "description": "str", "quantity": "number", "unitPrice": "number",
        "amount": "number", "accountCode?": "str?",
    },
)  # fmt: skip
APPROVAL_STEP = Shape(
    "approvalStep",
    {
        "stepId": "str", "level": "int", "approverUserId": "str?", "approverDisplayName": "str?",
        "status": "str", "decisionDate": "ts?", "comment": "str?",
    },
)  # fmt: skip
ATTACHMENT = Shape(
    "attachment",
    {
        "attachmentId": "str",
        "fileName": "str",
        "contentType": "str",
        "sizeBytes": "int",
        "uploadedDate": "ts",
    },
)
CAPTURED_DOCUMENT = Shape(
    "capturedDocument",
    {
        "documentId": "str",
        "fileName": "str",
        "extractedFields": "dict",
        "overallConfidence": "any",
        "ocrStatus": "str",
    },
)
BILL = Shape(
    "bill",
    {
        "billId": "str", "vendorId": "str?", "billNumber": "str?", "currency": "str", "issueDate": "date?",
        "dueDate": "date?", "lineItems": ListOf(LINE_ITEM), "totalAmount": "number", "paidAmount": "number",
        "scheduledAmount": "number", "openBalance": "number", "status": "str", "source": "str", "memo": "str?",
        "createdByUserId": "str?", "approvalPolicyId": "str?", "approvalSteps": ListOf(APPROVAL_STEP),
        "attachments": ListOf(ATTACHMENT), "capturedDocument": "dict?", "paymentIds": ListOf("str"),
        "accountingIds": "dict?", **_STAMPS,
    },
)  # fmt: skip
AUDIT_ENTRY = Shape("auditEntry", {"timestamp": "ts", "description": "str"})
PAYMENT = Shape(
    "payment",
    {
        "paymentId": "str", "billIds": ListOf("str"),
        "lineItems": ListOf(Shape("paymentLine", {"billId": "str", "memo": "str?", "amount": "number"})),
        "payeeId": "str?", "payeeName": "str?", "payeePaymentMethodId": "str?", "paymentMethod": "str",
        "amount": "number", "destinationCurrency": "str", "sourceCurrency": "str", "sourceAmount": "number",
        "exchangeRate": "number", "midMarketRate": "number", "feeAmount": "number", "feeCurrency": "str",
        "debitBankAccountId": "str?", "payFrom": Shape("payFrom", {"name": "str", "accountNumberMasked": "str?"}),
        "requestedDebitDate": "date?", "scheduledDebitDate": "date?",
        "debitedDate": "date?", "estimatedArrivalDate": "date?", "completedDate": "date?", "status": "str",
        "displayStatus": "str", "failureReason": "str?", "holdReason": "str?", "memo": "str?",
        "externalReference": "str?", "initiatedByUserId": "str?",
        "approvals": ListOf(Shape("paymentApproval", {
            "approverUserId": "str?", "approverDisplayName": "str?", "status": "str", "decisionDate": "ts?",
        })),
        "requiredApprovals": "int",
        "auditTrail": ListOf(AUDIT_ENTRY), "accountingIds": "dict?", **_STAMPS,
    },
)  # fmt: skip
INVOICE = Shape(
    "invoice",
    {
        "invoiceId": "str", "invoiceNumber": "str?", "customerId": "str?", "currency": "str",
        "issueDate": "date?", "dueDate": "date?", "terms": "str?", "lineItems": ListOf(LINE_ITEM),
        "totalAmount": "number", "amountPaid": "number", "balanceDue": "number", "status": "str",
        "sentDate": "ts?", "viewedDate": "ts?", "scheduledSendDate": "date?",
        "reminderSchedule": Shape("reminderSchedule", {
            "enabled": "bool", "daysBeforeDue": ListOf("int"), "daysAfterDue": ListOf("int"),
        }),
        "recurringInvoiceId": "str?", "memo": "str?", "accountingIds": "dict?", **_STAMPS,
    },
)  # fmt: skip
REMINDER = Shape(
    "reminder",
    {
        "reminderId": "str", "invoiceId": "str", "kind": "str", "scheduledFor": "ts?", "sentAt": "ts?",
        "status": "str", "channel": "str?", "recipient": "str?", **_STAMPS,
    },
)  # fmt: skip
RECURRING_INVOICE = Shape(
    "recurringInvoice",
    {
        "recurringInvoiceId": "str", "customerId": "str?", "currency": "str", "lineItems": ListOf(LINE_ITEM),
        "terms": "str?", "frequency": "str", "startDate": "date", "endDate": "date?", "nextIssueDate": "date?",
        "status": "str", "invoiceIds": ListOf("str"), **_STAMPS,
    },
)  # fmt: skip
CUSTOMER_PAYMENT = Shape(
    "customerPayment",
    {
        "customerPaymentId": "str", "customerId": "str?", "method": "str", "amount": "number",
        "currency": "str", "feeAmount": "number", "netAmount": "number", "status": "str",
        "failureReason": "str?", "debitDate": "date?", "depositDate": "date?",
        "allocations": ListOf(Shape("allocation", {"invoiceId": "str", "amount": "number"})),
        "matchStatus": "str", "auditTrail": ListOf(AUDIT_ENTRY), "accountingIds": "dict?", **_STAMPS,
    },
)  # fmt: skip

# --- statuses: portal enum → normalized enum (schemas/objects.py) ------------------------------

BILL_STATUS = {
    "ApprovalRequired": "pending_approval", "Open": "approved", "PartiallyPaid": "partially_paid",
    "PaymentScheduled": "scheduled", "Paid": "paid", "Rejected": "rejected", "Void": "void",
}  # fmt: skip
BILL_SOURCE = {"Manual": "manual", "Capture": "capture", "AccountingSync": "accounting"}
# A skipped step's approver never decided and no longer will: another approver on the level did, or
# the chain ended first (a rejection; a payment's approvals complete or cancelled).
STEP_DECISION = {
    "AwaitingPreviousLevel": "pending", "ApprovalMandatory": "pending", "Approved": "approved",
    "Rejected": "rejected", "Skipped": "skipped", "Pending": "pending",
}  # fmt: skip
PAYMENT_STATUS = {
    "ApprovalRequired": "pending_approval", "Pending": "scheduled", "OnHold": "scheduled",
    "FundsDebited": "processing", "Exchanging": "processing", "Processing": "processing",
    "Clearing": "in_transit", "Completed": "completed", "Failed": "failed", "Returned": "returned",
    "Recalled": "cancelled", "Rejected": "cancelled", "Cancelled": "cancelled", "Deleted": "cancelled",
}  # fmt: skip
# A hold (security or compliance review) freezes a payment where it was; a release resumes it there.
PAYMENT_ON_HOLD = "OnHold"
HOLD_REASON_UNKNOWN = "held by the portal (no reason given)"
# The portal's status of a payment a cancel stopped. Rejected, Recalled and Deleted read as
# `cancelled` too, but are someone else's doing (an approver, the bank).
PAYMENT_CANCELLED = "Cancelled"
PAYMENT_METHOD = {
    "Eft": "eft", "Ach": "ach", "Cheque": "cheque", "Wire": "wire", "Card": "card",
    "PlootoInstant": "instant", "EmailMoneyTransfer": "email_transfer",
}  # fmt: skip
PAYMENT_INSTANT = "PlootoInstant"  # paid from the company's Plooto Instant wallet
FAILURE_REASON_TEXT = {
    "InsufficientFunds": "Insufficient funds (NSF)", "InvalidAccount": "Invalid account",
    "IncorrectAccountHolderName": "Incorrect account holder name", "AccountClosed": "Account closed",
    "PaymentStopped": "Payment stopped",
}  # fmt: skip
# A recalled payment (an unclaimed e-mail transfer) lands back in the Plooto Instant wallet of its
# source currency (domain §3.1, 2.9). A failed or returned one leaves its debit as it is: the portal
# shows no money coming back for it.
PAYMENT_RECALLED = "Recalled"
# A cross-currency payment's money is exchanged when it enters Exchanging (after its debit); these
# statuses come at or after it (a wire is returned on the day it would have completed).
PAYMENT_EXCHANGED_STATUSES = {"Exchanging", "Processing", "Completed", "Returned"}
AUDIT_STATUS_PREFIX = "Status changed to "
# The line the portal writes when a new payment waits for its approvers (its first status).
AUDIT_APPROVALS_REQUIRED = "(Additional approvals required)"
CUSTOMER_PAYMENT_STATUS = {
    "Pending": "scheduled", "FundsDebited": "processing", "Clearing": "in_transit",
    "Completed": "completed", "Failed": "failed",
}  # fmt: skip
CUSTOMER_PAYMENT_METHOD = {"PreAuthorizedDebit": "pad", "Card": "card"}
INVOICE_STATUS = {
    "Draft": "draft", "Sent": "sent", "Viewed": "viewed", "PartiallyPaid": "partially_paid",
    "Paid": "paid", "Overdue": "overdue", "Void": "void",
}  # fmt: skip
RECURRING_FREQUENCY = {"Weekly": "weekly", "BiWeekly": "biweekly", "Monthly": "monthly"}
RECURRING_INTERVAL_DAYS = {"Weekly": 7, "BiWeekly": 14}
RECURRING_STATUS = {"Active": "active", "Cancelled": "cancelled", "Completed": "completed"}
REMINDER_KIND = {"BeforeDue": "before_due", "OnDue": "on_due", "AfterDue": "after_due", "Manual": "manual"}
REMINDER_STATUS = {"Scheduled": "scheduled", "Sent": "sent", "Cancelled": "cancelled"}
ROLE = {
    "Administrator": "administrator",
    "CFO": "cfo",
    "Accountant": "accountant",
    "Viewer": "viewer",
    "Custom": "custom",
}
APPROVE_PERMISSION = "ApprovePayments"
BANK_VERIFICATION = {"Verified": "verified", "BankValidationPending": "pending_verification"}
PAYEE_METHOD_TYPE = {
    "BankAccount": "bank_account",
    "Cheque": "cheque",
    "EmailMoneyTransfer": "email_transfer",
}
ACCOUNTING_PROVIDER = {
    "QuickBooksOnline": "quickbooks",
    "QuickBooksDesktop": "quickbooks",
    "Xero": "xero",
    "NetSuite": "netsuite",
}
SYNC_STATUS = {"Synced": "synced", "Pending": "pending", "Error": "error"}
CONTENT_TYPES = {".pdf": "application/pdf", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

# --- normalizers: one portal object → normalized records ---------------------------------------

Normalizer = Callable[[dict[str, Any], Context], list[UpstreamRecord]]


def _company_path(ctx: Context, collection: str, object_id: str) -> str:
    return f"{COMPANY_PATH.format(company=ctx.company_id)}/{collection}/{object_id}"


def _accounting_refs(raw: dict[str, Any]) -> dict[str, str | None]:
    refs: dict[str, str | None] = {"quickbooks": None, "xero": None, "netsuite": None}
    link = raw.get("accountingIds")
    if link and link.get("provider") in ACCOUNTING_PROVIDER:
        refs[ACCOUNTING_PROVIDER[link["provider"]]] = link.get("externalId")
    return refs


def _sync_mappings(
    raw: dict[str, Any], ctx: Context, object_type: str, object_id: str
) -> list[UpstreamRecord]:
    """The accounting counterpart of an object, from its `accountingIds`."""
    link = raw.get("accountingIds")
    if not link:
        return []
    check_shape(ACCOUNTING, link, object_type="sync_mapping")
    provider = ACCOUNTING_PROVIDER.get(link["provider"])
    status = SYNC_STATUS.get(link["syncStatus"])
    if provider is None or status is None:
        raise UpstreamChanged(
            "sync_mapping",
            [f"accountingIds: unknown provider/syncStatus {link['provider']!r}/{link['syncStatus']!r}"],
        )
    fields = {
        "object_type": object_type,
        "object_id": ref(object_type, object_id),
        "provider": provider,
        "external_id": link["externalId"],
        "status": status,
        "last_synced_at": parse_timestamp(link.get("lastSyncedAt")),
        "error": None,
    }
    return [
        ctx.record(
            "sync_mapping", f"{object_id}:{link['provider']}", fields, status_raw=link["syncStatus"],
            modified=raw.get(LAST_MODIFIED), created=raw.get(CREATED),
        )
    ]  # fmt: skip


def _mapped(table: dict[str, str], raw_value: str, object_type: str, field: str) -> str:
    try:
        return table[raw_value]
    except KeyError:
        raise UpstreamChanged(object_type, [f"{object_type}.{field}: unknown value {raw_value!r}"]) from None


def _line_items(lines: list[dict[str, Any]], currency: str) -> list[dict[str, Any]]:
    return [
        {
            "description": line["description"],
            "quantity": Decimal(line["quantity"]),
            "unit_price": money(line["unitPrice"], currency),
            "amount": money(line["amount"], currency),
            "account_code": line.get("accountCode"),
        }
        for line in lines
    ]


def normalize_company(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    fields = {
        "name": raw["name"],
        "country": raw["country"],
        "base_currency": raw["baseCurrency"],
        "status": snake(raw["status"]),
        "is_accounting_firm": raw["isAccountingFirm"],
        "approval_policy": {
            "role": ROLE.get(raw["role"], snake(raw["role"])),
            "permissions": list(raw["permissions"]),
            "accounting_provider": ACCOUNTING_PROVIDER.get(raw.get("accountingProvider") or ""),
            "outstanding_items": raw["outstandingItems"],
        },
    }
    company = Context(raw["companyId"], ctx.base_url, ctx.fetched_at)
    return [
        company.record(
            "company",
            raw["companyId"],
            fields,
            status_raw=raw["status"],
            path=COMPANY_PATH.format(company=raw["companyId"]),
        )
    ]


def instant_wallet_id(company_id: str, currency: str) -> str:
    """The portal id of a company's Plooto Instant wallet in `currency`: the portal gives the wallet
    no id of its own, only a balance per currency on the company (one wallet per currency)."""
    return f"{company_id}:instant:{currency}"


def normalize_instant_wallets(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    """A company's Plooto Instant wallets, from its `plootoInstantBalances` (the company's own page:
    its listing leaves them out): each mirrored as an account of kind `instant_wallet`."""
    company_id = raw["companyId"]
    company = Context(company_id, ctx.base_url, ctx.fetched_at)
    records = []
    for wallet in raw["plootoInstantBalances"]:
        currency = wallet["currency"]
        fields = {
            "name": f"Plooto Instant ({currency})",
            "institution_name": "Plooto",
            "kind": "instant_wallet",
            "currency": currency,
            "account_number_masked": None,
            "routing_masked": None,
            "status": "active",
            "is_default": False,
            "signing_authorities": [],
            "approvals_required": 0,  # a funding transfer's approvals are the debit account's
            "balance": money(wallet["balance"], currency),
        }
        records.append(
            company.record(
                "bank_account", instant_wallet_id(company_id, currency), fields,
                path=COMPANY_PATH.format(company=company_id),
            )
        )  # fmt: skip
    return records


def membership_id(company_id: str, user_id: str) -> str:
    """A user's id within one company: the portal's user ids are firm-wide, while the gateway
    mirrors each membership (role, permissions) separately."""
    return f"{user_id}@{company_id}"


def user_ref(ctx: Context, user_id: str | None) -> UpstreamRef | None:
    """A reference to a user's membership of the company being read."""
    return ref("user", membership_id(ctx.company_id, user_id)) if user_id else None


def normalize_user(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    name = " ".join(part for part in (raw.get("firstName"), raw.get("lastName")) if part) or raw["email"]
    fields = {
        "name": name,
        "email": raw["email"],
        "role": _mapped(ROLE, raw["role"], "user", "role"),
        "permissions": list(raw["permissions"]),
        "can_approve": APPROVE_PERMISSION in raw["permissions"],
        "mfa_enforced": False,  # the portal does not say per user
    }
    return [
        ctx.record(
            "user",
            membership_id(ctx.company_id, raw["userId"]),
            fields,
            status_raw=raw["role"],
            path=f"{COMPANY_PATH.format(company=ctx.company_id)}/users",
        )
    ]


def normalize_bank_account(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    account_id = raw["bankAccountId"]
    signers = [user_ref(ctx, user_id) for user_id in raw["signingAuthorities"]]
    path = f"{COMPANY_PATH.format(company=ctx.company_id)}/bank-accounts"
    stamps = {"modified": raw[LAST_MODIFIED], "created": raw[CREATED]}
    account = {
        "name": raw["name"],
        "institution_name": raw.get("institutionName"),
        "kind": "bank",
        "currency": raw["currency"],
        "account_number_masked": raw.get("accountNumberMasked"),
        "routing_masked": None,
        "status": BANK_VERIFICATION.get(raw["verificationStatus"], snake(raw["verificationStatus"])),
        "is_default": False,
        "signing_authorities": signers,
        "approvals_required": raw["requiredApprovals"],
        "balance": None,
    }
    # The account's k-of-N signing authorities are the payment approval rule of that account.
    rule = {
        "name": f"Signing authorities: {raw['name']}",
        "kind": "signing_authority",
        "applies_to": "payment",
        "min_amount": None,
        "max_amount": None,
        "bank_account_id": ref("bank_account", account_id),
        "approvals_required": raw["requiredApprovals"],
        "steps": [{"level": 1, "approver_ids": signers}],
        "active": raw["requiredApprovals"] > 0,
    }
    return [
        ctx.record(
            "bank_account", account_id, account, status_raw=raw["verificationStatus"], path=path, **stamps
        ),
        ctx.record("approval_rule", f"{account_id}:signing", rule, path=path, **stamps),
    ]


def normalize_approval_policy(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    applies_to = _mapped(
        {"Bill": "bill", "Payment": "payment"}, raw["appliesTo"], "approval_rule", "appliesTo"
    )
    fields = {
        "name": raw["name"],
        "kind": "threshold",
        "applies_to": applies_to,
        "min_amount": money(raw["minimumAmount"], raw["currency"]),
        "max_amount": None,
        "bank_account_id": None,
        "approvals_required": len(raw["levels"]),  # one approver per sequential level
        "steps": [
            {
                "level": level["level"],
                "approver_ids": [user_ref(ctx, uid) for uid in level["approverUserIds"]],
            }
            for level in raw["levels"]
        ],
        "active": True,
    }
    return [
        ctx.record(
            "approval_rule", raw["approvalPolicyId"], fields, path=f"{COMPANY_PATH.format(company=ctx.company_id)}/approval-policies",
            modified=raw[LAST_MODIFIED], created=raw[CREATED],
        )
    ]  # fmt: skip


def _default_method(method: dict[str, Any] | None) -> str | None:
    if method is None:
        return None
    if method["type"] == "BankAccount":
        return "ach" if method.get("currency") == "USD" else "eft"
    return {"Cheque": "cheque", "EmailMoneyTransfer": "email_transfer"}.get(method["type"])


def normalize_vendor(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    default_id = raw.get("defaultPaymentMethodId")
    methods = raw["paymentMethods"]
    default = next((m for m in methods if m["paymentMethodId"] == default_id), None)
    address = next((m["mailingAddress"] for m in methods if m.get("mailingAddress")), None)
    fields = {
        "name": raw["displayName"],
        "email": raw.get("email"),
        "currency": raw["currency"],
        "status": "active",
        "network_connected": raw["isPlootoNetworkConnected"],
        "network_id": None,
        "address": address if isinstance(address, dict) or address is None else {"text": address},
        "payment_methods": [
            {
                "id": m["paymentMethodId"],
                "type": PAYEE_METHOD_TYPE.get(m["type"], snake(m["type"]) or m["type"]),
                "masked": m.get("accountNumberMasked"),
                "currency": m.get("currency"),
                "institution_name": m.get("institutionName"),
                "is_default": m["paymentMethodId"] == default_id,
            }
            for m in methods
        ],
        "default_payment_method": _default_method(default),
    }
    vendor_id = raw["vendorId"]
    return [
        ctx.record(
            "vendor", vendor_id, fields, path=_company_path(ctx, "vendors", vendor_id), modified=raw[LAST_MODIFIED],
            created=raw[CREATED], accounting_refs=_accounting_refs(raw),
        ),
        *_sync_mappings(raw, ctx, "vendor", vendor_id),
    ]  # fmt: skip


def normalize_customer(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    methods: list[dict[str, Any]] = []
    if raw["padAgreementStatus"] == "Active":
        methods.append(
            {
                "id": None,
                "type": "pad",
                "masked": None,
                "currency": raw["currency"],
                "institution_name": None,
                "is_default": True,
            }
        )
    if raw.get("cardOnFileMasked"):
        methods.append(
            {
                "id": None,
                "type": "card",
                "masked": raw["cardOnFileMasked"],
                "currency": raw["currency"],
                "institution_name": None,
                "is_default": not methods,
            }
        )
    fields = {
        "name": raw["displayName"],
        "email": raw.get("email"),
        "currency": raw["currency"],
        "status": "active",
        "address": None,
        "payment_methods": methods,
        "pad_agreement_status": snake(raw["padAgreementStatus"]),
    }
    customer_id = raw["customerId"]
    return [
        ctx.record(
            "customer", customer_id, fields, path=_company_path(ctx, "customers", customer_id), modified=raw[LAST_MODIFIED],
            created=raw[CREATED], accounting_refs=_accounting_refs(raw),
        ),
        *_sync_mappings(raw, ctx, "customer", customer_id),
    ]  # fmt: skip


def _bill_approval(raw: dict[str, Any], ctx: Context) -> dict[str, Any]:
    steps = raw["approvalSteps"]
    statuses = {step["status"] for step in steps}
    if not steps:
        status = "not_required"
    elif "Rejected" in statuses or raw["status"] == "Rejected":
        status = "rejected"
    elif raw["status"] == "ApprovalRequired":
        status = "pending"
    else:
        status = "approved"
    return {
        "status": status,
        "steps": [
            {
                "level": step["level"],
                "approver_id": user_ref(ctx, step.get("approverUserId")),
                "approver_name": step.get("approverDisplayName"),
                "approver_email": None,
                "decision": _mapped(STEP_DECISION, step["status"], "bill", "approvalSteps.status"),
                "decided_at": parse_timestamp(step.get("decisionDate")),
                "comment": step.get("comment"),
            }
            for step in steps
        ],
    }


def normalize_bill(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    bill_id = raw["billId"]
    currency = raw["currency"]
    total = money(raw["totalAmount"], currency)
    captured = raw.get("capturedDocument")
    document_id = f"{bill_id}:capture" if captured else None
    fields = {
        "vendor_id": ref("vendor", raw.get("vendorId")),
        "number": raw.get("billNumber"),
        "issue_date": parse_date(raw.get("issueDate")),
        "due_date": parse_date(raw.get("dueDate")),
        "line_items": _line_items(raw["lineItems"], currency),
        "subtotal": total,  # the portal keeps no separate tax
        "tax": money(Decimal("0.00"), currency),
        "total": total,
        "amount_paid": money(raw["paidAmount"], currency),
        "amount_scheduled": money(raw["scheduledAmount"], currency),
        "amount_due": money(raw["openBalance"], currency),
        "status": _mapped(BILL_STATUS, raw["status"], "bill", "status"),
        "approval": _bill_approval(raw, ctx),
        **memo_and_reference(raw.get("memo")),
        "source": _mapped(BILL_SOURCE, raw["source"], "bill", "source"),
        "capture": None,
        "captured_document_id": ref("captured_document", document_id),
        "attachments": [
            {
                "id": a["attachmentId"],
                "file_name": a["fileName"],
                "content_type": a["contentType"],
                "size_bytes": a["sizeBytes"],
                "uploaded_at": parse_timestamp(a["uploadedDate"]),
            }
            for a in raw["attachments"]
        ],
    }
    path = _company_path(ctx, "bills", bill_id)
    stamps = {"modified": raw[LAST_MODIFIED], "created": raw[CREATED]}
    records = [
        ctx.record(
            "bill",
            bill_id,
            fields,
            status_raw=raw["status"],
            path=path,
            accounting_refs=_accounting_refs(raw),
            **stamps,
        )
    ]
    if captured:
        check_shape(CAPTURED_DOCUMENT, captured, object_type="captured_document")
        ocr = {
            name: {"value": value.get("value"), "confidence": value.get("confidence")}
            for name, value in captured["extractedFields"].items()
        }
        fields["capture"] = {
            "fields": ocr,
            "overall_confidence": captured["overallConfidence"],
            "ocr_status": snake(captured["ocrStatus"]),
            "document_id": captured["documentId"],
        }
        name = captured["fileName"]
        extension = name[name.rfind(".") :].lower() if "." in name else ""
        attachment = next((a for a in raw["attachments"] if a["fileName"] == name), None)
        document = {
            "filename": name,
            "content_type": attachment["contentType"]
            if attachment
            else CONTENT_TYPES.get(extension, "application/octet-stream"),
            # Unknown without the file: the bill no longer carries it (the portal gives no size of its own).
            "size_bytes": attachment["sizeBytes"] if attachment else None,
            "status": "converted",  # a captured document the portal shows is already a bill
            "fields": ocr,
            "bill_id": ref("bill", bill_id),
            "received_at": parse_timestamp(raw[CREATED]),
        }
        assert document_id is not None
        records.append(
            ctx.record(
                "captured_document",
                document_id,
                document,
                status_raw=captured["ocrStatus"],
                path=path,
                **stamps,
            )
        )
    records.extend(_sync_mappings(raw, ctx, "bill", bill_id))
    return records


def _payment_approval(raw: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
    approvals = raw["approvals"]
    required = raw["requiredApprovals"]
    if required == 0 and not approvals:
        return {"status": "not_required", "steps": []}
    decisions = [a["status"] for a in approvals]
    if "Rejected" in decisions:
        status = "rejected"
    elif decisions.count("Approved") >= required and raw["status"] != "ApprovalRequired":
        status = "approved"
    elif PAYMENT_STATUS.get(raw["status"]) == "cancelled":
        status = "cancelled"  # stopped before its approvals were in: it awaits none (it read `pending`)
    else:
        status = "pending"
    return {
        "status": status,
        "steps": [
            {
                "level": 1,
                "approver_id": user_ref(ctx, a.get("approverUserId")),
                "approver_name": a.get("approverDisplayName"),
                "approver_email": None,
                "decision": _mapped(STEP_DECISION, a["status"], "payment", "approvals.status"),
                "decided_at": parse_timestamp(a.get("decisionDate")),
                "comment": None,
            }
            for a in approvals
        ],
    }


def _business_day_start(value: str | None) -> datetime | None:
    return date_as_timestamp(value, ZoneInfo(BUSINESS_TIME_ZONE))


def _payment_history(raw: dict[str, Any], statuses: dict[str, str] = PAYMENT_STATUS) -> list[dict[str, Any]]:
    """The payment's status changes, from its audit trail (a payable's or a receivable's, by the
    `statuses` map). A hold keeps the status it froze."""
    history: list[dict[str, Any]] = []
    for entry in raw["auditTrail"]:
        description: str = entry["description"]
        status_raw = None
        if description.strip() == AUDIT_APPROVALS_REQUIRED:
            status_raw = "ApprovalRequired"
        elif description.startswith(AUDIT_STATUS_PREFIX):
            status_raw = description[len(AUDIT_STATUS_PREFIX) :].strip().rstrip(".")
        if status_raw is not None and status_raw in statuses:
            held = status_raw == PAYMENT_ON_HOLD and history
            history.append(
                {
                    "status": history[-1]["status"] if held else statuses[status_raw],
                    "status_raw": status_raw,
                    "occurred_at": parse_timestamp(entry["timestamp"]),
                    "reason": None,
                }
            )
    return history


def completed_at(history: list[dict[str, Any]], completed_date: str | None) -> datetime | None:
    """When a payment completed: its audit trail's time, on the day the portal gives as its
    completedDate. A trail entry on another day (a backdated payment's) gives way to the start of
    that day, and so does a trail without one."""
    completed = next((h["occurred_at"] for h in reversed(history) if h["status_raw"] == "Completed"), None)
    completed_on = parse_date(completed_date)
    if completed_on is not None and (completed is None or business_today(completed) != completed_on):
        return _business_day_start(completed_date)
    return completed


def _exchanged_at(
    raw: dict[str, Any], history: list[dict[str, Any]], quoted_at: datetime | None
) -> datetime | None:
    """When a cross-currency payment's money was exchanged: the audit trail's "Status changed to
    Exchanging"; for a payment past it whose trail does not say (only its last status), the start of
    its debit day, or its quote if later (the exchange never precedes the quote). None until then."""
    exchanged = next((h["occurred_at"] for h in history if h["status_raw"] == "Exchanging"), None)
    if exchanged is not None:
        return exchanged
    passed = {h["status_raw"] for h in history} | {raw["status"]}
    debited = _business_day_start(raw.get("debitedDate"))
    if debited is None or not passed & PAYMENT_EXCHANGED_STATUSES:
        return None
    return max(debited, quoted_at) if quoted_at is not None else debited


def normalize_payment(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    payment_id = raw["paymentId"]
    destination = raw["destinationCurrency"]
    source = raw["sourceCurrency"]
    status_raw = raw["status"]
    cross_currency = source != destination
    fx_id = f"{payment_id}:fx" if cross_currency else None
    history = _payment_history(raw)
    status = _mapped(PAYMENT_STATUS, status_raw, "payment", "status")
    if status_raw == PAYMENT_ON_HOLD and history and history[-1]["status_raw"] == PAYMENT_ON_HOLD:
        status = history[-1]["status"]  # held where it was: a payment in transit stays in transit
    completed = completed_at(history, raw.get("completedDate"))
    fee = money(raw["feeAmount"], raw["feeCurrency"])
    failure = raw.get("failureReason")
    fields = {
        "direction": "payable",
        "vendor_id": ref("vendor", raw.get("payeeId")),
        "customer_id": None,
        "allocations": [
            {
                "bill_id": ref("bill", line["billId"]),
                "invoice_id": None,
                "amount": money(line["amount"], destination),
            }
            for line in raw["lineItems"]
        ],
        "amount": money(raw["amount"], destination),
        "method": _mapped(PAYMENT_METHOD, raw["paymentMethod"], "payment", "paymentMethod"),
        "debit_bank_account_id": ref("bank_account", raw.get("debitBankAccountId")),
        # The page's "Pay From"; its "Pay To" shows the payee's bank, not a number (domain §1.3).
        "debit_account_masked": raw["payFrom"]["accountNumberMasked"],
        "credit_account_masked": None,
        "scheduled_for": parse_date(raw.get("scheduledDebitDate") or raw.get("requestedDebitDate")),
        "expected_arrival": parse_date(raw.get("estimatedArrivalDate")),
        "completed_at": completed,
        "status": status,
        "status_history": history,
        # Set exactly while the portal holds it (the reason may be missing: a hold still is one).
        "hold_reason": (raw.get("holdReason") or HOLD_REASON_UNKNOWN)
        if status_raw == PAYMENT_ON_HOLD
        else None,
        "failure_code": snake(failure),
        "failure_reason": FAILURE_REASON_TEXT.get(failure or "", failure),
        "trace_number": None,
        "reference": raw.get("externalReference"),
        "memo": raw.get("memo"),
        "fee": fee,
        "fx_conversion_id": ref("fx_conversion", fx_id),
        "approval": _payment_approval(raw, ctx),
    }
    path = _company_path(ctx, "payments", payment_id)
    stamps = {"modified": raw[LAST_MODIFIED], "created": raw[CREATED]}
    records = [
        ctx.record(
            "payment",
            payment_id,
            fields,
            status_raw=status_raw,
            path=path,
            accounting_refs=_accounting_refs(raw),
            **stamps,
        )
    ]
    # Its transactions and FX conversion have no portal status of their own (status_raw None): the
    # payment's would rewrite them, with an event each, at every step of the payment.
    # The money left the account on debitedDate, whatever the payment did next (held, failed,
    # returned, recalled) and whenever the gateway first looked: the debit stays.
    debited = raw.get("debitedDate")
    if fx_id is not None:
        quoted_at = parse_timestamp(raw[CREATED])
        exchanged_at = _exchanged_at(raw, history, quoted_at)
        if exchanged_at is not None:
            fx_status = "executed"  # and stays so: a payment failed after its exchange was exchanged
        elif status_raw in {"ApprovalRequired", "Pending", PAYMENT_ON_HOLD, "FundsDebited"}:
            fx_status = "quoted"
        else:
            fx_status = "expired"
        conversion = {
            "payment_id": ref("payment", payment_id),
            "source": money(raw["sourceAmount"], source),
            "target": money(raw["amount"], destination),
            "rate": Decimal(raw["exchangeRate"]),
            "fee": None,  # the portal's margin is in the rate; the wire fee is the payment's
            "status": fx_status,
            "quoted_at": quoted_at,
            "executed_at": exchanged_at,
        }
        records.append(ctx.record("fx_conversion", fx_id, conversion, path=path, **stamps))
    if debited:
        # An Instant payment is paid from the wallet in its source currency; its debitBankAccountId
        # only names whose signing authorities approve it, and that account's money does not move.
        if raw["paymentMethod"] == PAYMENT_INSTANT:
            account = ref("bank_account", instant_wallet_id(ctx.company_id, source))
        else:
            account = ref("bank_account", raw.get("debitBankAccountId"))
        debit = {
            "bank_account_id": account,
            "payment_id": ref("payment", payment_id),
            "kind": "debit",
            "amount": money(raw["sourceAmount"], source),
            "occurred_on": parse_date(debited),
            "status": "posted",
            "description": f"Payment to {raw.get('payeeName') or 'payee'}",
            "counterparty": raw.get("payeeName"),
        }
        records.append(ctx.record("transaction", f"{payment_id}:debit", debit, path=path, **stamps))
        if Decimal(raw["feeAmount"]) > 0:
            fee_fields = {
                **debit,
                "kind": "fee",
                "amount": fee,
                "description": f"{raw['paymentMethod']} payment fee",
                "counterparty": None,
            }
            records.append(ctx.record("transaction", f"{payment_id}:fee", fee_fields, path=path, **stamps))
        if status_raw == PAYMENT_RECALLED:
            recalled = next((h["occurred_at"] for h in history if h["status_raw"] == PAYMENT_RECALLED), None)
            recalled = recalled or parse_timestamp(raw[LAST_MODIFIED])
            credit = {
                **debit,
                "bank_account_id": ref("bank_account", instant_wallet_id(ctx.company_id, source)),
                "kind": "credit",
                "occurred_on": recalled.astimezone(ZoneInfo(BUSINESS_TIME_ZONE)).date() if recalled else None,
                "description": f"Recalled payment to {raw.get('payeeName') or 'payee'}",
            }
            records.append(ctx.record("transaction", f"{payment_id}:recall", credit, path=path, **stamps))
    records.extend(_sync_mappings(raw, ctx, "payment", payment_id))
    return records


def normalize_customer_payment(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    payment_id = raw["customerPaymentId"]
    currency = raw["currency"]
    status_raw = raw["status"]
    failure = raw.get("failureReason")
    history = _payment_history(raw, CUSTOMER_PAYMENT_STATUS)
    fields = {
        "direction": "receivable",
        "vendor_id": None,
        "customer_id": ref("customer", raw.get("customerId")),
        "allocations": [
            {
                "bill_id": None,
                "invoice_id": ref("invoice", a["invoiceId"]),
                "amount": money(a["amount"], currency),
            }
            for a in raw["allocations"]
        ],
        "amount": money(raw["amount"], currency),
        "method": _mapped(CUSTOMER_PAYMENT_METHOD, raw["method"], "payment", "method"),
        "debit_bank_account_id": None,
        "debit_account_masked": None,
        "credit_account_masked": None,
        "scheduled_for": parse_date(raw.get("debitDate")),
        "expected_arrival": parse_date(raw.get("depositDate")),
        # As a payable's: the trail's time on the day the money was deposited.
        "completed_at": completed_at(history, raw.get("depositDate")) if status_raw == "Completed" else None,
        "status": _mapped(CUSTOMER_PAYMENT_STATUS, status_raw, "payment", "status"),
        "status_history": history,
        "failure_code": snake(failure),
        "failure_reason": FAILURE_REASON_TEXT.get(failure or "", failure),
        "trace_number": None,
        "reference": None,
        "memo": None,
        "fee": money(raw["feeAmount"], currency),
        "fx_conversion_id": None,
        "approval": None,
    }
    return [
        ctx.record(
            "payment", payment_id, fields, status_raw=status_raw, path=_company_path(ctx, "customer-payments", payment_id),
            modified=raw[LAST_MODIFIED], created=raw[CREATED], accounting_refs=_accounting_refs(raw),
        ),
        *_sync_mappings(raw, ctx, "payment", payment_id),
    ]  # fmt: skip


def reminder_offsets(schedule: dict[str, Any]) -> list[int]:
    """Day offsets relative to the due date: negative before, positive after."""
    if not schedule["enabled"]:
        return []
    return sorted({-int(d) for d in schedule["daysBeforeDue"]} | {int(d) for d in schedule["daysAfterDue"]})


def normalize_reminder(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    """A reminder of the schedule or the sent log: it becomes part of its invoice (`reminders`)."""
    reminder_id = raw["reminderId"]
    scheduled = parse_timestamp(raw.get("scheduledFor"))
    fields = {
        "invoice_id": ref("invoice", raw["invoiceId"]),
        "upstream_id": reminder_id,
        "kind": _mapped(REMINDER_KIND, raw["kind"], "invoice_reminder", "kind"),
        "scheduled_for": business_today(scheduled) if scheduled else None,  # the portal's day, not UTC's
        "sent_at": parse_timestamp(raw.get("sentAt")),
        "channel": (raw.get("channel") or "email").lower(),
        "status": _mapped(REMINDER_STATUS, raw["status"], "invoice_reminder", "status"),
    }
    return [
        ctx.record(
            "invoice_reminder",
            reminder_id,
            fields,
            status_raw=raw["status"],
            modified=raw[LAST_MODIFIED],
            created=raw[CREATED],
        )
    ]


def normalize_invoice(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    invoice_id = raw["invoiceId"]
    currency = raw["currency"]
    total = money(raw["totalAmount"], currency)
    # `reminders` (the schedule and sent log) is not on the invoice object: the reminders feed fills it.
    fields = {
        "customer_id": ref("customer", raw.get("customerId")),
        "number": raw.get("invoiceNumber"),
        "issue_date": parse_date(raw.get("issueDate")),
        "due_date": parse_date(raw.get("dueDate")),
        "terms": raw.get("terms"),
        "line_items": _line_items(raw["lineItems"], currency),
        "subtotal": total,
        "tax": money(Decimal("0.00"), currency),
        "total": total,
        "amount_paid": money(raw["amountPaid"], currency),
        "amount_due": money(raw["balanceDue"], currency),
        "status": _mapped(INVOICE_STATUS, raw["status"], "invoice", "status"),
        "sent_at": parse_timestamp(raw.get("sentDate")),
        "scheduled_send_date": parse_date(raw.get("scheduledSendDate")),
        "viewed_at": parse_timestamp(raw.get("viewedDate")),
        "recurring_invoice_id": ref("recurring_invoice", raw.get("recurringInvoiceId")),
        "reminder_schedule": reminder_offsets(raw["reminderSchedule"]),
        **memo_and_reference(raw.get("memo")),
    }
    return [
        ctx.record(
            "invoice", invoice_id, fields, status_raw=raw["status"], path=_company_path(ctx, "invoices", invoice_id),
            modified=raw[LAST_MODIFIED], created=raw[CREATED], accounting_refs=_accounting_refs(raw),
        ),
        *_sync_mappings(raw, ctx, "invoice", invoice_id),
    ]  # fmt: skip


def normalize_recurring_invoice(raw: dict[str, Any], ctx: Context) -> list[UpstreamRecord]:
    plan_id = raw["recurringInvoiceId"]
    currency = raw["currency"]
    lines = _line_items(raw["lineItems"], currency)
    amount = sum((Decimal(line["amount"]) for line in raw["lineItems"]), Decimal("0.00"))
    frequency = raw["frequency"]
    first = raw["lineItems"][0]["description"] if raw["lineItems"] else "invoice"
    fields = {
        "customer_id": ref("customer", raw.get("customerId")),
        "name": f"{frequency} {first}",
        "frequency": RECURRING_FREQUENCY.get(frequency, "custom"),
        "interval_days": RECURRING_INTERVAL_DAYS.get(frequency),
        "start_date": parse_date(raw["startDate"]),
        "end_date": parse_date(raw.get("endDate")),
        "next_issue_date": parse_date(raw.get("nextIssueDate")),
        "occurrences_remaining": None,
        "amount": money(amount, currency),
        "status": _mapped(RECURRING_STATUS, raw["status"], "recurring_invoice", "status"),
        "uses_pad": False,
        "template": {
            "currency": currency,
            "terms": raw.get("terms"),
            "line_items": lines,
            "invoice_ids": [ref("invoice", i) for i in raw["invoiceIds"]],
        },
    }
    return [
        ctx.record(
            "recurring_invoice", plan_id, fields, status_raw=raw["status"],
            path=_company_path(ctx, "recurring-invoices", plan_id), modified=raw[LAST_MODIFIED], created=raw[CREATED],
        )
    ]  # fmt: skip


# --- collections and feeds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    """A company-scoped listing of the JSON API and how its objects are read."""

    path: str  # relative to /api/companies/{company}
    shape: Shape
    object_type: str  # the normalized type its objects mainly become (drift errors name it)
    id_field: str
    normalize: Normalizer
    has_detail: bool = True  # GET {path}/{id} exists
    paged: bool = True  # a page of `items`; else the company's own object (`path` empty) read whole


USERS = Collection("users", USER, "user", "userId", normalize_user, has_detail=False)
BANK_ACCOUNTS = Collection(
    "bank-accounts", BANK_ACCOUNT, "bank_account", "bankAccountId", normalize_bank_account, has_detail=False
)
INSTANT_WALLETS = Collection(
    "", COMPANY_PAGE, "bank_account", "companyId", normalize_instant_wallets, has_detail=False, paged=False
)
APPROVAL_POLICIES = Collection(
    "approval-policies",
    APPROVAL_POLICY,
    "approval_rule",
    "approvalPolicyId",
    normalize_approval_policy,
    has_detail=False,
)
VENDORS = Collection("vendors", VENDOR, "vendor", "vendorId", normalize_vendor)
CUSTOMERS = Collection("customers", CUSTOMER, "customer", "customerId", normalize_customer)
BILLS = Collection("bills", BILL, "bill", "billId", normalize_bill)
PAYMENTS = Collection("payments", PAYMENT, "payment", "paymentId", normalize_payment)
INVOICES = Collection("invoices", INVOICE, "invoice", "invoiceId", normalize_invoice)
RECURRING_INVOICES = Collection(
    "recurring-invoices",
    RECURRING_INVOICE,
    "recurring_invoice",
    "recurringInvoiceId",
    normalize_recurring_invoice,
)
REMINDERS = Collection(
    "reminders", REMINDER, "invoice_reminder", "reminderId", normalize_reminder, has_detail=False
)
CUSTOMER_PAYMENTS = Collection(
    "customer-payments", CUSTOMER_PAYMENT, "payment", "customerPaymentId", normalize_customer_payment
)

# Dependency order: reference data first (the shared lane), then the documents that point at it, in
# two lanes that refer to nothing of each other's: payables and receivables. The lanes are pulled
# side by side, so the portal's rate is used by the light pages of one while the other's heavy ones
# (payments, with their transactions and FX) are written.
FEEDS: tuple[Feed, ...] = (
    Feed("users", ("user",), incremental=False, cadence="slow"),
    Feed("bank_accounts", ("bank_account", "approval_rule"), incremental=True, cadence="slow"),
    Feed("approval_policies", ("approval_rule",), incremental=True, cadence="slow"),
    # Read whole (one request a company) with the other accounts: every fast run would add a request
    # a company to each run for a balance (its Instant payments' transactions are read fast).
    Feed("instant_wallets", ("bank_account",), incremental=False, cadence="slow"),
    Feed("vendors", ("vendor", "sync_mapping"), incremental=True, cadence="slow", lane="payables"),
    Feed("customers", ("customer", "sync_mapping"), incremental=True, cadence="slow", lane="receivables"),
    Feed("bills", ("bill", "captured_document", "sync_mapping"), incremental=True, cadence="fast",
         lane="payables"),
    Feed("payments", ("payment", "fx_conversion", "transaction", "sync_mapping"), incremental=True,
         cadence="fast", lane="payables"),
    Feed("recurring_invoices", ("recurring_invoice",), incremental=True, cadence="slow", lane="receivables"),
    Feed("invoices", ("invoice", "sync_mapping"), incremental=True, cadence="fast", lane="receivables"),
    Feed("reminders", ("invoice_reminder",), incremental=True, cadence="fast", lane="receivables"),
    Feed("customer_payments", ("payment", "sync_mapping"), incremental=True, cadence="fast",
         lane="receivables"),
)  # fmt: skip
FEED_COLLECTIONS: dict[str, Collection] = {
    "users": USERS,
    "bank_accounts": BANK_ACCOUNTS,
    "approval_policies": APPROVAL_POLICIES,
    "instant_wallets": INSTANT_WALLETS,
    "vendors": VENDORS,
    "customers": CUSTOMERS,
    "bills": BILLS,
    "payments": PAYMENTS,
    "recurring_invoices": RECURRING_INVOICES,
    "invoices": INVOICES,
    "reminders": REMINDERS,
    "customer_payments": CUSTOMER_PAYMENTS,
}


@dataclass(frozen=True)
class ObjectSource:
    """Where one normalized object is read from: the collection(s) and the portal id to ask for."""

    collections: tuple[Collection, ...]  # tried in order; a receivable payment lives elsewhere
    portal_id: Callable[[str], str] = lambda upstream_id: upstream_id


def _parent(upstream_id: str) -> str:
    return upstream_id.split(":", 1)[0]


OBJECT_SOURCES: dict[str, ObjectSource] = {
    "user": ObjectSource((USERS,), lambda membership: membership.split("@", 1)[0]),
    "bank_account": ObjectSource((BANK_ACCOUNTS, INSTANT_WALLETS)),
    "approval_rule": ObjectSource((APPROVAL_POLICIES, BANK_ACCOUNTS), _parent),
    "vendor": ObjectSource((VENDORS,)),
    "customer": ObjectSource((CUSTOMERS,)),
    "bill": ObjectSource((BILLS,)),
    "captured_document": ObjectSource((BILLS,), _parent),
    "payment": ObjectSource((PAYMENTS, CUSTOMER_PAYMENTS)),
    "fx_conversion": ObjectSource((PAYMENTS,), _parent),
    "transaction": ObjectSource((PAYMENTS,), _parent),
    "invoice": ObjectSource((INVOICES,)),
    "recurring_invoice": ObjectSource((RECURRING_INVOICES,)),
}

# --- session timing -----------------------------------------------------------------------------

# `GET /api/session` answers idleExpiresAt = now + this, which tells the portal's clock.
SESSION_IDLE_TIMEOUT_SECONDS = 15 * 60
SESSION_IDLE_EXPIRES = "idleExpiresAt"
SESSION_MFA_METHOD = "mfaMethod"  # Totp or Sms (MFA_METHODS)
TOTP_DIGITS = 6
TOTP_INTERVAL = 30

# --- writes -------------------------------------------------------------------------------------
# What the portal's write endpoints are called and what their bodies look like. Every write that
# creates an object carries the gateway's reference, so the object can be found again after an
# ambiguous outcome: a payment in `externalReference` (exact-match filter), a bill or an invoice in
# its memo (listed back by modifiedSince and matched there).

BUSINESS_TIME_ZONE = "America/Toronto"  # the portal's "today" for debit dates
EXTERNAL_REFERENCE_FIELD = "externalReference"
EXTERNAL_REFERENCE_MAX = 100
MEMO_MAX = 255
MEMO_REFERENCE_PREFIX = "[ref "  # "<memo> [ref <reference>]" on bills and invoices
PAYMENT_ID_FIELD = "paymentId"
BILL_ID_FIELD = "billId"
INVOICE_ID_FIELD = "invoiceId"
ERROR_CUT_OFF_PASSED = "CutOffPassed"
ERROR_DEBIT_DATE_IN_PAST = "DebitDateInPast"
ERROR_TRACE_FIELD = "traceId"
TRACE_HEADER = "x-plooto-id"
ATTACHMENT_FILE_FIELD = "file"
PAYMENT_METHOD_TO_PORTAL = {value: key for key, value in PAYMENT_METHOD.items()}
INVOICE_SEND = {"now": "Now", "scheduled": "Scheduled", "draft": "Draft"}
RECURRING_FREQUENCY_TO_PORTAL = {value: key for key, value in RECURRING_FREQUENCY.items()}
INVOICE_TERMS = ("DueOnReceipt", "Net15", "Net30", "Net45", "Net60")
# How far the dates of a write may reach from the portal's today: a debit or a scheduled send at
# most a year ahead; a bill's or invoice's dates and a recurring plan's end within ten years either
# side. Beyond that the portal answers 400 ValidationFailed.
SCHEDULE_HORIZON = timedelta(days=365)
DOCUMENT_DATE_RANGE = timedelta(days=3652)


@dataclass(frozen=True)
class WriteLimits:
    """What the portal accepts in a new bill's or invoice's fields; beyond it, 400 ValidationFailed."""

    amount_places: int = 2  # a line's amount and unit price: cents
    amount_digits: int = 15
    quantity_places: int = 4  # a line's quantity: more than zero, to 4 places
    quantity_digits: int = 12
    account_code_length: int = 32
    number_length: int = 64  # a bill's or invoice's number
    reminder_days_before: int = 60  # an invoice reminder at most this many days before its due date
    reminder_days_after: int = 120  # or after it


WRITE_LIMITS = WriteLimits()


def business_today(now: datetime | None = None) -> date:
    """The portal's calendar date at `now` (default: this machine's clock)."""
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(BUSINESS_TIME_ZONE)).date()


def company_collection(company: str, collection: str) -> str:
    """`/api/companies/{company}/{collection}`."""
    return f"{COMPANY_PATH.format(company=company)}/{collection}"


def memo_with_reference(memo: str | None, reference: str) -> str:
    """A memo that carries the gateway's reference (the caller's memo first, trimmed to fit)."""
    tag = f"{MEMO_REFERENCE_PREFIX}{reference}]"
    text = (memo or "").strip()
    room = MEMO_MAX - len(tag) - 1
    return f"{text[:room]} {tag}" if text else tag


def memo_has_reference(memo: Any, reference: str) -> bool:
    return isinstance(memo, str) and memo.endswith(f"{MEMO_REFERENCE_PREFIX}{reference}]")


_MEMO_TAG = re.compile(
    rf"^(?P<memo>.*?) ?{re.escape(MEMO_REFERENCE_PREFIX)}(?P<reference>papi-[^\]\s]+)\]$", re.DOTALL
)


def memo_and_reference(memo: Any) -> dict[str, str | None]:
    """A bill's or invoice's memo and the gateway's reference the memo carries (memo_with_reference),
    served apart: the caller's memo as it was written, the reference as a payment's is."""
    found = _MEMO_TAG.match(memo) if isinstance(memo, str) else None
    if found is None:
        return {"memo": memo, "reference": None}
    return {"memo": found["memo"] or None, "reference": found["reference"]}


# The gateway's request field for each field of the write bodies below, by the object written: a
# refusal names the portal's field (`lineItems.0.amount`), the caller sees its own (`lines.0.amount`).
_LINE_FIELDS = {"lineItems": "lines", "description": "description", "quantity": "quantity",
                "unitPrice": "unit_price", "amount": "amount", "accountCode": "account_code"}  # fmt: skip
REQUEST_FIELDS: dict[str, dict[str, str]] = {
    "payment": {BILL_ID_FIELD: "bill_id", "amount": "amount", "debitBankAccountId": "debit_bank_account_id",
                "requestedDebitDate": "scheduled_for", "paymentMethod": "method", "memo": "memo"},
    "bill": {**_LINE_FIELDS, "vendorId": "vendor_id", "billNumber": "number", "issueDate": "issue_date",
             "dueDate": "due_date", "memo": "memo", "currency": "currency"},
    "invoice": {**_LINE_FIELDS, "customerId": "customer_id", "invoiceNumber": "number", "issueDate": "issue_date",
                "terms": "terms", "dueDate": "due_date", "scheduledSendDate": "scheduled_send_date", "memo": "memo",
                "send": "send", "reminderSchedule": "reminders", "enabled": "enabled",
                "daysBeforeDue": "days_before_due", "daysAfterDue": "days_after_due", "recurring": "recurring",
                "frequency": "frequency", "endDate": "end_date"},
}  # fmt: skip


def request_field(object_type: str, portal_field: str | None) -> str | None:
    """`portal_field` (a dotted path in the body written for `object_type`) as the gateway's request
    names it; list indexes are kept, and a field the map does not know is left as the portal names it."""
    if not portal_field:
        return portal_field
    names = REQUEST_FIELDS.get(object_type, {})
    return ".".join(names.get(part, part) for part in portal_field.split("."))


def payment_body(
    *,
    bill_id: str,
    amount: Decimal,
    payment_method: str | None,
    debit_bank_account_id: str,
    requested_debit_date: str,
    external_reference: str,
    memo: str | None,
) -> dict[str, Any]:
    """The create-payment body; `payment_method` is a normalized method (eft, wire, …) or None."""
    body: dict[str, Any] = {
        BILL_ID_FIELD: bill_id,
        "amount": str(amount),
        "debitBankAccountId": debit_bank_account_id,
        "requestedDebitDate": requested_debit_date,
        EXTERNAL_REFERENCE_FIELD: external_reference,
    }
    if payment_method:
        body["paymentMethod"] = PAYMENT_METHOD_TO_PORTAL[payment_method]
    if memo:
        body["memo"] = memo[:MEMO_MAX]
    return body


def _portal_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        item: dict[str, Any] = {"description": line["description"]}
        for ours, theirs in (("quantity", "quantity"), ("unit_price", "unitPrice"), ("amount", "amount"),
                             ("account_code", "accountCode")):  # fmt: skip
            if line.get(ours) is not None:
                item[theirs] = str(line[ours]) if ours != "account_code" else line[ours]
        out.append(item)
    return out


def bill_body(
    *,
    vendor_id: str,
    number: str,
    issue_date: str,
    due_date: str,
    lines: list[dict[str, Any]],
    currency: str | None,
    memo: str,
) -> dict[str, Any]:
    """The create-bill body (the memo already carries the reference)."""
    body: dict[str, Any] = {
        "vendorId": vendor_id, "billNumber": number, "issueDate": issue_date, "dueDate": due_date,
        "lineItems": _portal_lines(lines), "memo": memo,
    }  # fmt: skip
    if currency:
        body["currency"] = currency
    return body


def invoice_body(
    *,
    customer_id: str,
    number: str | None,
    issue_date: str | None,
    terms: str | None,
    due_date: str | None,
    lines: list[dict[str, Any]],
    memo: str,
    send: str,
    scheduled_send_date: str | None,
    reminders: dict[str, Any] | None,
    recurring: dict[str, Any] | None,
) -> dict[str, Any]:
    """The create-invoice body; `send` is now · scheduled · draft."""
    body: dict[str, Any] = {
        "customerId": customer_id, "lineItems": _portal_lines(lines), "memo": memo, "send": INVOICE_SEND[send],
    }  # fmt: skip
    optional = {"invoiceNumber": number, "issueDate": issue_date, "terms": terms, "dueDate": due_date,
                "scheduledSendDate": scheduled_send_date}  # fmt: skip
    body.update({key: value for key, value in optional.items() if value is not None})
    if reminders is not None:
        body["reminderSchedule"] = {
            "enabled": bool(reminders.get("enabled", True)),
            "daysBeforeDue": list(reminders.get("days_before_due", [])),
            "daysAfterDue": list(reminders.get("days_after_due", [])),
        }
    if recurring is not None:
        plan: dict[str, Any] = {"frequency": RECURRING_FREQUENCY_TO_PORTAL[recurring["frequency"]]}
        if recurring.get("end_date"):
            plan["endDate"] = recurring["end_date"]
        body["recurring"] = plan
    return body
