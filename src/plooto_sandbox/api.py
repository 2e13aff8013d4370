"""The portal's internal JSON API (what its single-page app calls), under `/api`.

Every route authenticates with the session cookie plus the `X-XSRF-TOKEN` header, resolves the
caller's membership in the company, checks the permission the action needs, then calls the
payables/receivables services. Shapes come from `representations`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from plooto_sandbox import auth, payables, receivables
from plooto_sandbox import representations as shape
from plooto_sandbox.business_days import local_date
from plooto_sandbox.errors import PortalError, not_found
from plooto_sandbox.faults import SESSION_COOKIE
from plooto_sandbox.instance import Sandbox, sandbox_of
from plooto_sandbox.model import (
    ApprovalPolicy,
    Attachment,
    BankAccount,
    Bill,
    CapturedDocument,
    Customer,
    CustomerPayment,
    ExtractedField,
    Invoice,
    LineItem,
    Membership,
    Payment,
    PaymentMethod,
    Permission,
    RecurringInvoice,
    Reminder,
    ReminderSchedule,
    User,
    Vendor,
)
from plooto_sandbox.money import cents, money, parse_portal_json, rate, timestamp
from plooto_sandbox.rails import SUPPORTED_CURRENCIES, mid_market_rate, portal_rate
from plooto_sandbox.responses import PortalJSONResponse
from plooto_sandbox.store import ID_ATTRIBUTE, PortalState

router = APIRouter(prefix="/api")

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 500
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
UPLOAD_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/tiff"})

Amount = Annotated[Decimal, Field(decimal_places=2, max_digits=15)]
Model = TypeVar("Model", bound=BaseModel)


# -- request bodies -------------------------------------------------------------------------------
class LineItemIn(BaseModel):
    """A bill or invoice line in a create request."""

    description: str = Field(min_length=1, max_length=500)
    quantity: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=4)] = Decimal(1)
    unitPrice: Amount | None = None
    amount: Amount | None = None
    accountCode: str | None = Field(default=None, max_length=32)


class CreateBillIn(BaseModel):
    """Body of POST …/bills."""

    vendorId: str
    billNumber: str = Field(min_length=1, max_length=64)
    currency: str | None = None
    issueDate: date
    dueDate: date
    lineItems: list[LineItemIn] = Field(min_length=1)
    memo: str | None = Field(default=None, max_length=255)


class DecisionIn(BaseModel):
    """Body of approve/reject requests."""

    comment: str | None = Field(default=None, max_length=500)


class CreatePaymentIn(BaseModel):
    """Body of POST …/payments."""

    billId: str
    amount: Amount
    paymentMethod: PaymentMethod | None = None
    debitBankAccountId: str
    requestedDebitDate: date
    payeePaymentMethodId: str | None = None
    memo: str | None = Field(default=None, max_length=255)
    externalReference: str | None = Field(default=None, max_length=100)


class ReminderScheduleIn(BaseModel):
    """Reminder schedule of a new invoice."""

    enabled: bool = True
    daysBeforeDue: list[Annotated[int, Field(ge=0, le=60)]] = [3]
    daysAfterDue: list[Annotated[int, Field(ge=0, le=120)]] = [1, 7]


class RecurringIn(BaseModel):
    """Makes a new invoice the first of a recurring plan."""

    frequency: Literal["Weekly", "BiWeekly", "Monthly"]
    endDate: date | None = None


class CreateInvoiceIn(BaseModel):
    """Body of POST …/invoices."""

    customerId: str
    invoiceNumber: str | None = Field(default=None, max_length=64)
    issueDate: date | None = None
    terms: Literal["DueOnReceipt", "Net15", "Net30", "Net45", "Net60"] = "Net30"
    dueDate: date | None = None
    lineItems: list[LineItemIn] = Field(min_length=1)
    memo: str | None = Field(default=None, max_length=255)
    send: Literal["Now", "Scheduled", "Draft"] = "Now"
    scheduledSendDate: date | None = None
    reminderSchedule: ReminderScheduleIn | None = None
    recurring: RecurringIn | None = None


class CreateCustomerPaymentIn(BaseModel):
    """Body of POST …/customer-payments."""

    customerId: str
    amount: Amount
    method: Literal["PreAuthorizedDebit", "Card"]
    debitDate: date | None = None
    invoiceIds: list[str] | None = None


# -- plumbing ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Caller:
    """The authenticated user behind an API request."""

    sandbox: Sandbox
    state: PortalState
    session: auth.Session
    user: User


def caller(request: Request) -> Caller:
    """Session cookie + anti-CSRF header, or the portal's 401/403."""
    sandbox = sandbox_of(request)
    state = sandbox.state
    session = auth.live_session(state, sandbox.config, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise PortalError(401, "NotAuthenticated", "Your session has expired. Please sign in again.")
    if session.mfa_pending:
        raise PortalError(401, "MfaRequired", "Two-step verification is required. Complete it at /mfa.")
    refuse_until_terms_accepted(state, session)
    header = request.headers.get("x-xsrf-token", "")
    if not header or not hmac.compare_digest(header, session.xsrf_token):
        raise PortalError(403, "AntiforgeryTokenInvalid", "The anti-forgery token is missing or invalid.")
    auth.refresh(state, session)
    return Caller(sandbox, state, session, state.users[session.user_id])


def refuse_until_terms_accepted(state: PortalState, session: auth.Session) -> None:
    """403 TermsNotAccepted while the user has not accepted the terms of service in force (the
    session stays; accepting them at /terms lets it through again)."""
    if state.terms_pending(session.user_id):
        raise PortalError(
            403,
            "TermsNotAccepted",
            "The Plooto Terms of Service have changed. Review and accept them at /terms to continue.",
        )


def member_of(who: Caller, company_id: str) -> Membership:
    """The caller's membership in the company, or 404 CompanyNotFound."""
    member = who.state.membership(who.user.user_id, company_id)
    if member is None:
        raise PortalError(404, "CompanyNotFound", "Company was not found.")
    return member


def require(member: Membership, permission: Permission) -> None:
    """403 PermissionDenied unless the membership grants the permission."""
    if permission not in member.permissions:
        raise PortalError(
            403,
            "PermissionDenied",
            f"Your role ({member.role.value}) lacks the {permission.value} permission.",
        )


def owned(state: PortalState, cls: type[Any], object_id: str, company_id: str, what: str) -> Any:
    """The object if it exists in this company; other companies' objects are reported as missing."""
    found = state.get(cls, object_id)
    if found is None or found.company_id != company_id:
        raise not_found(what)
    return found


def validation_failed(error: ValidationError) -> PortalError:
    """A pydantic error as the portal's 400 envelope."""
    details = [
        {"field": ".".join(str(part) for part in issue["loc"]), "message": issue["msg"]}
        for issue in error.errors()
    ]
    return PortalError(400, "ValidationFailed", "One or more fields are invalid.", details)


async def body_of(request: Request, model: type[Model]) -> Model:
    """Parse the JSON body (decimals exact) into the request model, or 400."""
    raw = await request.body()
    try:
        data = parse_portal_json(raw) if raw.strip() else {}
    except ValueError as exc:
        raise PortalError(400, "ValidationFailed", "The request body is not valid JSON.") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def _bad_query(name: str, message: str) -> PortalError:
    return PortalError(
        400, "ValidationFailed", f"Query parameter {name} is invalid.", [{"field": name, "message": message}]
    )


def parse_timestamp(text: str, name: str) -> datetime:
    """An ISO-8601 query timestamp as a UTC datetime, or 400."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError as exc:
        raise _bad_query(name, "Expected an ISO-8601 timestamp, e.g. 2026-03-02T14:00:00Z.") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise _bad_query(name, "Expected an integer.") from exc
    if not low <= value <= high:
        raise _bad_query(name, f"Must be between {low} and {high}.")
    return value


def listing(
    request: Request,
    state: PortalState,
    company_id: str,
    kind: str,
    render: Callable[[Any], dict[str, Any]],
    keep: Callable[[Any], bool] | None = None,
    candidates: list[Any] | None = None,
) -> PortalJSONResponse:
    """One page in (lastModified, id) order, optionally only objects modified since an instant.

    `candidates` (objects already narrowed down through a lookup, e.g. a bill's payments) replaces
    the company-wide index, so such queries cost what they return rather than the collection size.
    """
    page_number = _int_param(request, "pageNumber", 1, 1, 10_000_000)
    page_size = _int_param(request, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    since_text = request.query_params.get("modifiedSince")
    since = parse_timestamp(since_text, "modifiedSince") if since_text else None
    table = state.objects[kind]
    if candidates is not None:
        attribute = ID_ATTRIBUTE[kind]
        chosen = sorted(
            (obj.modified, getattr(obj, attribute))
            for obj in candidates
            if obj.company_id == company_id and (since is None or obj.modified >= since)
        )
        ids = [object_id for _, object_id in chosen]
    else:
        index = state.index(company_id, kind)
        ids = index.changed_since(since) if since is not None else index.ordered_ids()
    start = (page_number - 1) * page_size
    if keep is None:
        total = len(ids)
        items = [render(table[object_id]) for object_id in ids[start : start + page_size]]
    else:
        kept = [obj for obj in (table[object_id] for object_id in ids) if keep(obj)]
        total = len(kept)
        items = [render(obj) for obj in kept[start : start + page_size]]
    return PortalJSONResponse(
        {
            "items": items,
            "pageNumber": page_number,
            "pageSize": page_size,
            "totalCount": total,
            "totalPages": (total + page_size - 1) // page_size,
        }
    )


def status_filter(request: Request) -> Callable[[Any], bool] | None:
    """The `status=` query filter, if given."""
    wanted = request.query_params.get("status")
    if not wanted:
        return None
    # Statuses are StrEnums on some objects and plain strings on others; both compare as str.
    return lambda obj: str(obj.status) == wanted


def line_items(state: PortalState, lines: list[LineItemIn]) -> list[LineItem]:
    """Request lines as domain line items (amount defaults to quantity times unit price)."""
    result: list[LineItem] = []
    for position, line in enumerate(lines):
        if line.amount is None and line.unitPrice is None:
            raise PortalError(
                400,
                "ValidationFailed",
                "Each line needs an amount or a unit price.",
                [{"field": f"lineItems.{position}.amount", "message": "Required when unitPrice is absent."}],
            )
        amount = (
            line.amount if line.amount is not None else money(line.quantity * (line.unitPrice or Decimal(0)))
        )
        unit = line.unitPrice if line.unitPrice is not None else money(amount / line.quantity)
        result.append(
            LineItem(state.new_id(), line.description, line.quantity, unit, money(amount), line.accountCode)
        )
    return result


# -- session and company -------------------------------------------------------------------------
@router.get("/antiforgery/token")
async def antiforgery_token(request: Request) -> PortalJSONResponse:
    """GET /api/antiforgery/token (README §5)."""
    sandbox = sandbox_of(request)
    session = auth.live_session(sandbox.state, sandbox.config, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise PortalError(401, "NotAuthenticated", "Your session has expired. Please sign in again.")
    refuse_until_terms_accepted(sandbox.state, session)
    response = PortalJSONResponse({"requestToken": session.xsrf_token})
    response.set_cookie(
        "XSRF-TOKEN", session.xsrf_token, samesite="strict", secure=sandbox.config.secure_cookies
    )
    return response


@router.get("/session")
async def current_session(request: Request) -> PortalJSONResponse:
    """GET /api/session (README §5)."""
    who = caller(request)
    config = who.sandbox.config
    return PortalJSONResponse(
        {
            "userId": who.user.user_id,
            "email": who.user.email,
            "firstName": who.user.first_name,
            "lastName": who.user.last_name,
            "mfaMethod": who.user.mfa_method,
            "selectedCompanyId": who.session.selected_company_id,
            "idleExpiresAt": timestamp(
                who.session.last_seen + timedelta(minutes=config.session_idle_minutes)
            ),
            "absoluteExpiresAt": timestamp(
                who.session.created + timedelta(hours=config.session_absolute_hours)
            ),
        }
    )


@router.get("/companies")
async def list_companies(request: Request) -> PortalJSONResponse:
    """GET /api/companies (README §5)."""
    who = caller(request)
    companies = who.state.companies_of(who.user.user_id)
    page_number = _int_param(request, "pageNumber", 1, 1, 10_000_000)
    page_size = _int_param(request, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    start = (page_number - 1) * page_size
    items = [
        shape.company(who.state, c, who.state.memberships[(who.user.user_id, c.company_id)])
        for c in companies[start : start + page_size]
    ]
    total = len(companies)
    return PortalJSONResponse(
        {"items": items, "pageNumber": page_number, "pageSize": page_size, "totalCount": total,
         "totalPages": (total + page_size - 1) // page_size}
    )  # fmt: skip


@router.get("/companies/{company_id}")
async def get_company(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id} (README §5)."""
    who = caller(request)
    member = member_of(who, company_id)
    return PortalJSONResponse(shape.company(who.state, who.state.companies[company_id], member, detail=True))


@router.get("/companies/{company_id}/users")
async def list_users(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/users (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    members = sorted(
        (m for (uid, cid), m in who.state.memberships.items() if cid == company_id),
        key=lambda m: m.user_id,
    )
    page_number = _int_param(request, "pageNumber", 1, 1, 10_000_000)
    page_size = _int_param(request, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    start = (page_number - 1) * page_size
    items = [shape.user(who.state.users[m.user_id], m) for m in members[start : start + page_size]]
    total = len(members)
    return PortalJSONResponse(
        {"items": items, "pageNumber": page_number, "pageSize": page_size, "totalCount": total,
         "totalPages": (total + page_size - 1) // page_size}
    )  # fmt: skip


@router.get("/companies/{company_id}/bank-accounts")
async def list_bank_accounts(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/bank-accounts (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(request, who.state, company_id, "bankAccount", shape.bank_account)


@router.get("/companies/{company_id}/bank-accounts/{bank_account_id}")
async def get_bank_account(request: Request, company_id: str, bank_account_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/bank-accounts/{bank_account_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    account = owned(who.state, BankAccount, bank_account_id, company_id, "Bank account")
    return PortalJSONResponse(shape.bank_account(account))


@router.get("/companies/{company_id}/approval-policies")
async def list_approval_policies(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/approval-policies (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(request, who.state, company_id, "approvalPolicy", shape.approval_policy)


@router.get("/companies/{company_id}/fx-rates")
async def fx_rate(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/fx-rates (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    source = request.query_params.get("sourceCurrency", "CAD")
    destination = request.query_params.get("destinationCurrency", "USD")
    for name, value in (("sourceCurrency", source), ("destinationCurrency", destination)):
        if value not in SUPPORTED_CURRENCIES:
            raise _bad_query(name, f"Supported: {', '.join(sorted(SUPPORTED_CURRENCIES))}.")
    return PortalJSONResponse(
        {
            "sourceCurrency": source,
            "destinationCurrency": destination,
            "exchangeRate": rate(portal_rate(source, destination)),
            "midMarketRate": rate(mid_market_rate(source, destination)),
            "quotedAt": timestamp(who.state.now),
        }
    )


# -- payables -----------------------------------------------------------------------------------
@router.get("/companies/{company_id}/vendors")
async def list_vendors(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/vendors (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(request, who.state, company_id, "vendor", shape.vendor)


@router.get("/companies/{company_id}/vendors/{vendor_id}")
async def get_vendor(request: Request, company_id: str, vendor_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/vendors/{vendor_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return PortalJSONResponse(shape.vendor(owned(who.state, Vendor, vendor_id, company_id, "Vendor")))


@router.get("/companies/{company_id}/bills")
async def list_bills(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/bills (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    state = who.state
    return listing(request, state, company_id, "bill", lambda b: shape.bill(state, b), status_filter(request))


@router.get("/companies/{company_id}/bills/{bill_id}")
async def get_bill(request: Request, company_id: str, bill_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/bills/{bill_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return PortalJSONResponse(shape.bill(who.state, owned(who.state, Bill, bill_id, company_id, "Bill")))


@router.post("/companies/{company_id}/bills", status_code=201)
async def create_bill(request: Request, company_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/bills (README §5)."""
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    body = await body_of(request, CreateBillIn)
    state = who.state
    vendor: Vendor = owned(state, Vendor, body.vendorId, company_id, "Vendor")
    bill = payables.create_bill(
        state,
        company_id,
        who.user,
        vendor,
        body.billNumber,
        body.currency or vendor.currency,
        body.issueDate,
        body.dueDate,
        line_items(state, body.lineItems),
        body.memo,
        "Manual",
        None,
    )
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.bill(state, bill), status_code=201)


async def _upload(request: Request) -> tuple[str, str, bytes, dict[str, str]]:
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart bodies surface as assorted parser errors
        raise PortalError(400, "ValidationFailed", "Expected a multipart/form-data body.") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise PortalError(
            400, "ValidationFailed", "A file is required.", [{"field": "file", "message": "Required."}]
        )
    content = await upload.read()
    content_type = (upload.content_type or "application/octet-stream").split(";")[0]
    if content_type not in UPLOAD_TYPES:
        raise PortalError(
            400,
            "ValidationFailed",
            "Unsupported file type.",
            [{"field": "file", "message": f"Accepted: {', '.join(sorted(UPLOAD_TYPES))}."}],
        )
    if not content or len(content) > MAX_UPLOAD_BYTES:
        raise PortalError(
            400,
            "ValidationFailed",
            "File is empty or larger than 10 MB.",
            [{"field": "file", "message": "Size."}],
        )
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    return upload.filename or "document", content_type, content, fields


@router.post("/companies/{company_id}/bills/{bill_id}/attachments", status_code=201)
async def add_attachment(request: Request, company_id: str, bill_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/bills/{bill_id}/attachments (README §5)."""
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    bill: Bill = owned(who.state, Bill, bill_id, company_id, "Bill")
    name, content_type, content, _ = await _upload(request)
    attachment = Attachment(who.state.new_id(), name, content_type, len(content), who.state.now)
    bill.attachments.append(attachment)
    who.state.touch_bill(bill)
    who.sandbox.dirty = True
    return PortalJSONResponse(
        {
            "attachmentId": attachment.attachment_id,
            "fileName": attachment.file_name,
            "contentType": attachment.content_type,
            "sizeBytes": attachment.size_bytes,
            "uploadedDate": timestamp(attachment.uploaded),
        },
        status_code=201,
    )


@router.post("/companies/{company_id}/captured-documents", status_code=201)
async def capture_document(request: Request, company_id: str) -> PortalJSONResponse:
    """Plooto Capture: OCR an uploaded bill (deterministically, from the file's hash) into a bill."""
    who = caller(request)
    require(member_of(who, company_id), Permission.PUBLISH_DOCUMENTS)
    name, content_type, content, fields = await _upload(request)
    state = who.state
    digest = hashlib.sha256(content).digest()
    vendors = [state.objects["vendor"][i] for i in state.index(company_id, "vendor").ordered_ids()]
    if fields.get("vendorId"):
        vendor: Vendor = owned(state, Vendor, fields["vendorId"], company_id, "Vendor")
    else:
        vendor = sorted(vendors, key=lambda v: v.vendor_id)[digest[0] % len(vendors)]
    total = cents(int.from_bytes(digest[1:4], "big") % 400_000 + 1_000)
    issue = local_date(state.now)
    number = f"OCR-{digest[4:7].hex().upper()}"

    def confidence(byte: int) -> Decimal:
        return Decimal(650 + byte % 349).scaleb(-3)

    line = LineItem(state.new_id(), f"Captured from {name}", Decimal(1), total, total, None)
    bill = payables.create_bill(
        state, company_id, who.user, vendor, number, vendor.currency, issue, issue + timedelta(days=30), [line],
        None, "Capture", None,
    )  # fmt: skip
    extracted = {
        "vendorName": ExtractedField(vendor.display_name, confidence(digest[8])),
        "billNumber": ExtractedField(number, confidence(digest[9])),
        "issueDate": ExtractedField(issue.isoformat(), confidence(digest[10])),
        "dueDate": ExtractedField((issue + timedelta(days=30)).isoformat(), confidence(digest[11])),
        "totalAmount": ExtractedField(format(total, "f"), confidence(digest[12])),
        "currency": ExtractedField(vendor.currency, confidence(digest[13])),
    }
    bill.captured = CapturedDocument(
        state.new_id(), name, extracted, min(f.confidence for f in extracted.values())
    )
    bill.attachments.append(Attachment(state.new_id(), name, content_type, len(content), state.now))
    state.touch_bill(bill)
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.bill(state, bill), status_code=201)


async def _decide_bill(request: Request, company_id: str, bill_id: str, approve: bool) -> PortalJSONResponse:
    who = caller(request)
    require(member_of(who, company_id), Permission.APPROVE_PAYMENTS)
    body = await body_of(request, DecisionIn)
    bill: Bill = owned(who.state, Bill, bill_id, company_id, "Bill")
    payables.decide_bill(who.state, bill, who.user, approve, body.comment)
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.bill(who.state, bill))


@router.post("/companies/{company_id}/bills/{bill_id}/approve")
async def approve_bill(request: Request, company_id: str, bill_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/bills/{bill_id}/approve (README §5)."""
    return await _decide_bill(request, company_id, bill_id, True)


@router.post("/companies/{company_id}/bills/{bill_id}/reject")
async def reject_bill(request: Request, company_id: str, bill_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/bills/{bill_id}/reject (README §5)."""
    return await _decide_bill(request, company_id, bill_id, False)


@router.get("/companies/{company_id}/payments")
async def list_payments(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/payments (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    state = who.state
    # billId and externalReference are answered from lookups, not by scanning every payment.
    candidate_ids: set[str] | None = None
    bill_id = request.query_params.get("billId")
    if bill_id:
        bill = state.bill(bill_id)
        candidate_ids = set(bill.payment_ids) if bill is not None else set()
    reference = request.query_params.get("externalReference")
    if reference is not None:
        by_reference = set(state.payments_by_reference.get((company_id, reference), []))
        candidate_ids = by_reference if candidate_ids is None else candidate_ids & by_reference
    candidates = None
    if candidate_ids is not None:
        candidates = [p for p in (state.payment(pid) for pid in candidate_ids) if p is not None]
    return listing(
        request,
        state,
        company_id,
        "payment",
        lambda p: shape.payment(state, p),
        status_filter(request),
        candidates,
    )


@router.get("/companies/{company_id}/payments/{payment_id}")
async def get_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/payments/{payment_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return PortalJSONResponse(
        shape.payment(who.state, owned(who.state, Payment, payment_id, company_id, "Payment"))
    )


@router.post("/companies/{company_id}/payments", status_code=201)
async def create_payment(request: Request, company_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/payments (README §5)."""
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    body = await body_of(request, CreatePaymentIn)
    state = who.state
    bill: Bill = owned(state, Bill, body.billId, company_id, "Bill")
    account: BankAccount = owned(state, BankAccount, body.debitBankAccountId, company_id, "Bank account")
    payment = payables.create_payment(
        state,
        who.user,
        bill,
        body.amount,
        account,
        body.requestedDebitDate,
        body.paymentMethod,
        body.payeePaymentMethodId,
        body.memo,
        body.externalReference,
    )
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.payment(state, payment), status_code=201)


async def _payment_action(
    request: Request, company_id: str, payment_id: str, action: str
) -> PortalJSONResponse:
    who = caller(request)
    member = member_of(who, company_id)
    payment: Payment = owned(who.state, Payment, payment_id, company_id, "Payment")
    if action in ("approve", "reject"):
        require(member, Permission.APPROVE_PAYMENTS)
        await body_of(request, DecisionIn)
        payables.decide_payment(who.state, payment, who.user, action == "approve", member.permissions)
    else:
        require(member, Permission.EDIT_PAYMENTS)
        if action == "recall":
            payables.recall_payment(who.state, payment)
        else:
            payables.cancel_payment(who.state, payment, deleted=action == "delete")
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.payment(who.state, payment))


@router.post("/companies/{company_id}/payments/{payment_id}/approve")
async def approve_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/payments/{payment_id}/approve (README §5)."""
    return await _payment_action(request, company_id, payment_id, "approve")


@router.post("/companies/{company_id}/payments/{payment_id}/reject")
async def reject_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/payments/{payment_id}/reject (README §5)."""
    return await _payment_action(request, company_id, payment_id, "reject")


@router.post("/companies/{company_id}/payments/{payment_id}/cancel")
async def cancel_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/payments/{payment_id}/cancel (README §5)."""
    return await _payment_action(request, company_id, payment_id, "cancel")


@router.delete("/companies/{company_id}/payments/{payment_id}")
async def delete_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """DELETE /api/companies/{company_id}/payments/{payment_id} (README §5)."""
    return await _payment_action(request, company_id, payment_id, "delete")


@router.post("/companies/{company_id}/payments/{payment_id}/recall")
async def recall_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/payments/{payment_id}/recall (README §5)."""
    return await _payment_action(request, company_id, payment_id, "recall")


# -- receivables --------------------------------------------------------------------------------
@router.get("/companies/{company_id}/customers")
async def list_customers(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/customers (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(request, who.state, company_id, "customer", shape.customer)


@router.get("/companies/{company_id}/customers/{customer_id}")
async def get_customer(request: Request, company_id: str, customer_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/customers/{customer_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return PortalJSONResponse(shape.customer(owned(who.state, Customer, customer_id, company_id, "Customer")))


@router.get("/companies/{company_id}/invoices")
async def list_invoices(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/invoices (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(request, who.state, company_id, "invoice", shape.invoice, status_filter(request))


@router.get("/companies/{company_id}/invoices/{invoice_id}")
async def get_invoice(request: Request, company_id: str, invoice_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/invoices/{invoice_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return PortalJSONResponse(shape.invoice(owned(who.state, Invoice, invoice_id, company_id, "Invoice")))


@router.post("/companies/{company_id}/invoices", status_code=201)
async def create_invoice(request: Request, company_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/invoices (README §5)."""
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    body = await body_of(request, CreateInvoiceIn)
    state = who.state
    customer: Customer = owned(state, Customer, body.customerId, company_id, "Customer")
    receivables.check_invoice_dates(
        state,
        body.issueDate,
        body.dueDate,
        body.scheduledSendDate,
        body.recurring.endDate if body.recurring else None,
    )
    issue = body.issueDate or local_date(state.now)
    schedule = (
        ReminderSchedule(
            body.reminderSchedule.enabled,
            list(body.reminderSchedule.daysBeforeDue),
            list(body.reminderSchedule.daysAfterDue),
        )
        if body.reminderSchedule
        else receivables.default_reminders()
    )
    lines = line_items(state, body.lineItems)
    plan: RecurringInvoice | None = None
    if body.recurring is not None:
        template = [
            LineItem(state.new_id(), ln.description, ln.quantity, ln.unit_price, ln.amount, None)
            for ln in lines
        ]
        plan = receivables.create_recurring(
            state, customer, template, body.terms, body.recurring.frequency, issue, body.recurring.endDate
        )
    invoice = receivables.create_invoice(
        state,
        customer,
        body.invoiceNumber,
        issue,
        body.terms,
        body.dueDate,
        lines,
        body.memo,
        body.send,
        body.scheduledSendDate,
        schedule,
        plan.recurring_invoice_id if plan else None,
        None,
    )
    if plan is not None:
        plan.invoice_ids.append(invoice.invoice_id)
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.invoice(invoice), status_code=201)


async def _invoice_action(
    request: Request, company_id: str, invoice_id: str, action: str
) -> PortalJSONResponse:
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    invoice: Invoice = owned(who.state, Invoice, invoice_id, company_id, "Invoice")
    who.sandbox.dirty = True
    if action == "send":
        receivables.send_invoice(who.state, invoice)
    elif action == "void":
        receivables.void_invoice(who.state, invoice)
    else:
        reminder = receivables.send_manual_reminder(who.state, invoice)
        return PortalJSONResponse(shape.reminder(reminder), status_code=201)
    return PortalJSONResponse(shape.invoice(invoice))


@router.post("/companies/{company_id}/invoices/{invoice_id}/send")
async def send_invoice(request: Request, company_id: str, invoice_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/invoices/{invoice_id}/send (README §5)."""
    return await _invoice_action(request, company_id, invoice_id, "send")


@router.post("/companies/{company_id}/invoices/{invoice_id}/void")
async def void_invoice(request: Request, company_id: str, invoice_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/invoices/{invoice_id}/void (README §5)."""
    return await _invoice_action(request, company_id, invoice_id, "void")


@router.post("/companies/{company_id}/invoices/{invoice_id}/reminders", status_code=201)
async def send_reminder(request: Request, company_id: str, invoice_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/invoices/{invoice_id}/reminders (README §5)."""
    return await _invoice_action(request, company_id, invoice_id, "remind")


@router.get("/companies/{company_id}/recurring-invoices")
async def list_recurring(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/recurring-invoices (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(
        request, who.state, company_id, "recurringInvoice", shape.recurring_invoice, status_filter(request)
    )


@router.get("/companies/{company_id}/recurring-invoices/{plan_id}")
async def get_recurring(request: Request, company_id: str, plan_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/recurring-invoices/{plan_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    plan = owned(who.state, RecurringInvoice, plan_id, company_id, "Recurring invoice")
    return PortalJSONResponse(shape.recurring_invoice(plan))


@router.post("/companies/{company_id}/recurring-invoices/{plan_id}/cancel")
async def cancel_recurring(request: Request, company_id: str, plan_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/recurring-invoices/{plan_id}/cancel (README §5)."""
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    plan: RecurringInvoice = owned(who.state, RecurringInvoice, plan_id, company_id, "Recurring invoice")
    receivables.cancel_recurring(who.state, plan)
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.recurring_invoice(plan))


@router.get("/companies/{company_id}/reminders")
async def list_reminders(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/reminders (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    invoice_id = request.query_params.get("invoiceId")
    keep: Callable[[Reminder], bool] | None = (lambda r: r.invoice_id == invoice_id) if invoice_id else None
    return listing(request, who.state, company_id, "reminder", shape.reminder, keep)


@router.get("/companies/{company_id}/customer-payments")
async def list_customer_payments(request: Request, company_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/customer-payments (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return listing(
        request, who.state, company_id, "customerPayment", shape.customer_payment, status_filter(request)
    )


@router.get("/companies/{company_id}/customer-payments/{payment_id}")
async def get_customer_payment(request: Request, company_id: str, payment_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/customer-payments/{payment_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    found = owned(who.state, CustomerPayment, payment_id, company_id, "Customer payment")
    return PortalJSONResponse(shape.customer_payment(found))


@router.post("/companies/{company_id}/customer-payments", status_code=201)
async def create_customer_payment(request: Request, company_id: str) -> PortalJSONResponse:
    """POST /api/companies/{company_id}/customer-payments (README §5)."""
    who = caller(request)
    require(member_of(who, company_id), Permission.EDIT_PAYMENTS)
    body = await body_of(request, CreateCustomerPaymentIn)
    state = who.state
    customer: Customer = owned(state, Customer, body.customerId, company_id, "Customer")
    collected = receivables.create_customer_payment(
        state, customer, body.method, body.amount, body.debitDate or local_date(state.now), body.invoiceIds
    )
    who.sandbox.dirty = True
    return PortalJSONResponse(shape.customer_payment(collected), status_code=201)


@router.get("/companies/{company_id}/approval-policies/{policy_id}")
async def get_approval_policy(request: Request, company_id: str, policy_id: str) -> PortalJSONResponse:
    """GET /api/companies/{company_id}/approval-policies/{policy_id} (README §5)."""
    who = caller(request)
    member_of(who, company_id)
    return PortalJSONResponse(
        shape.approval_policy(owned(who.state, ApprovalPolicy, policy_id, company_id, "Approval policy"))
    )
