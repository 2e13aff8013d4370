"""The `/__sandbox` control API: reset, clock, faults, outbox, rate limit, ground truth, mutations.

Tests and demos use it to drive the portal; it is unauthenticated and can be switched off.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request

from plooto_sandbox import auth, clock, payables, receivables
from plooto_sandbox import representations as shape
from plooto_sandbox.business_days import CANADA, local_date, local_time
from plooto_sandbox.errors import PortalError, invalid_field, not_found
from plooto_sandbox.instance import Sandbox, sandbox_of
from plooto_sandbox.model import (
    BankAccount,
    Bill,
    Customer,
    FailureReason,
    Invoice,
    LineItem,
    PayeeMethod,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Role,
    User,
    Vendor,
)
from plooto_sandbox.money import cents, money, parse_portal_json, timestamp
from plooto_sandbox.rails import CUT_OFF
from plooto_sandbox.responses import PortalJSONResponse
from plooto_sandbox.seed import demo_users

router = APIRouter(prefix="/__sandbox", include_in_schema=False)

# Bounds that keep a reset within memory and a few seconds of seeding per 100k bills.
MAX_COMPANIES = 1_000
MAX_BILLS_PER_COMPANY = 1_000_000


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = parse_portal_json(raw)
    except ValueError as exc:
        raise PortalError(400, "ValidationFailed", "Body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise PortalError(400, "ValidationFailed", "Body must be a JSON object.")
    return data


def _clock_view(sandbox: Sandbox) -> dict[str, Any]:
    now = sandbox.state.now
    today = local_date(now)
    business_hours = (
        CANADA.is_business_day(today)
        and local_time(now) < CUT_OFF[PaymentMethod.EFT]
        and local_time(now).hour >= 8
    )
    return {"now": timestamp(now), "businessDate": today.isoformat(), "isBusinessHours": business_hours}


def _time(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise PortalError(400, "ValidationFailed", f"{name} must be an ISO timestamp.") from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


@router.post("/reset")
async def reset(request: Request) -> PortalJSONResponse:
    """POST /__sandbox/reset (README §9)."""
    sandbox = sandbox_of(request)
    body = await _json(request)
    config = sandbox.config
    start = _time(body["startTime"], "startTime") if body.get("startTime") else config.start_time
    try:
        seed = int(body.get("seed", config.seed))
        companies = int(body.get("companies", config.companies))
        bills = int(body.get("billsPerCompany", config.bills_per_company))
    except (TypeError, ValueError) as exc:
        raise PortalError(
            400, "ValidationFailed", "seed, companies and billsPerCompany must be integers."
        ) from exc
    if not (1 <= companies <= MAX_COMPANIES and 0 <= bills <= MAX_BILLS_PER_COMPANY):
        raise PortalError(
            400,
            "ValidationFailed",
            f"companies must be 1..{MAX_COMPANIES} and billsPerCompany 0..{MAX_BILLS_PER_COMPANY}.",
        )
    sandbox.reset(seed, companies, bills, start)
    return PortalJSONResponse(
        {
            "seed": config.seed,
            "companies": [
                {"companyId": c.company_id, "name": c.name} for c in sandbox.state.companies.values()
            ],
            "billsPerCompany": config.bills_per_company,
            **_clock_view(sandbox),
        }
    )


@router.get("/clock")
async def get_clock(request: Request) -> PortalJSONResponse:
    """GET /__sandbox/clock (README §9)."""
    return PortalJSONResponse(_clock_view(sandbox_of(request)))


@router.post("/clock")
async def move_clock(request: Request) -> PortalJSONResponse:
    """POST /__sandbox/clock (README §9)."""
    sandbox = sandbox_of(request)
    body = await _json(request)
    state = sandbox.state
    if "set" in body:
        processed = clock.advance_to(state, _time(body["set"], "set"))
    else:
        try:
            days = int(body.get("advance_days", 0))
            hours = float(body.get("advance_hours", 0))
            minutes = float(body.get("advance_minutes", 0))
        except (TypeError, ValueError) as exc:
            raise PortalError(400, "ValidationFailed", "advance_* values must be numbers.") from exc
        if days < 0 or hours < 0 or minutes < 0:
            raise PortalError(409, "InvalidState", "The sandbox clock cannot move backwards.")
        processed = clock.advance(state, days, hours, minutes)
    sandbox.dirty = True
    return PortalJSONResponse({**_clock_view(sandbox), "eventsProcessed": processed})


@router.get("/faults")
async def list_faults(request: Request) -> PortalJSONResponse:
    """GET /__sandbox/faults (README §9)."""
    return PortalJSONResponse([f.describe() for f in sandbox_of(request).faults.faults])


@router.post("/faults", status_code=201)
async def add_fault(request: Request) -> PortalJSONResponse:
    """POST /__sandbox/faults (README §9)."""
    fault = sandbox_of(request).faults.add(await _json(request))
    return PortalJSONResponse(fault.describe(), status_code=201)


@router.delete("/faults")
async def clear_faults(request: Request) -> PortalJSONResponse:
    """DELETE /__sandbox/faults (README §9)."""
    sandbox_of(request).faults.clear()
    return PortalJSONResponse({"removed": "all"})


@router.delete("/faults/{fault_id}")
async def remove_fault(request: Request, fault_id: str) -> PortalJSONResponse:
    """DELETE /__sandbox/faults/{fault_id} (README §9)."""
    if not sandbox_of(request).faults.remove(fault_id):
        raise not_found("Fault")
    return PortalJSONResponse({"removed": fault_id})


@router.get("/outbox")
async def outbox(request: Request) -> PortalJSONResponse:
    """GET /__sandbox/outbox (README §9)."""
    to = request.query_params.get("to")
    kind = request.query_params.get("kind")
    messages = [
        m
        for m in sandbox_of(request).state.outbox
        if (to is None or m.to == to or m.user_email == to)
        and (kind is None or m.kind.lower() == kind.lower())
    ]
    return PortalJSONResponse(
        [
            {"kind": m.kind, "to": m.to, "userEmail": m.user_email, "subject": m.subject, "body": m.body,
             "code": m.code, "sentAt": timestamp(m.sent_at)}
            for m in messages
        ]
    )  # fmt: skip


@router.put("/rate-limit")
async def set_rate_limit(request: Request) -> PortalJSONResponse:
    """PUT /__sandbox/rate-limit (README §9)."""
    sandbox = sandbox_of(request)
    body = await _json(request)
    try:
        per_second = float(body.get("ratePerSecond", sandbox.limiter.rate))
        burst = int(body.get("burst", sandbox.limiter.burst))
    except (TypeError, ValueError) as exc:
        raise PortalError(400, "ValidationFailed", "ratePerSecond and burst must be numbers.") from exc
    if per_second <= 0 or burst < 1:
        raise PortalError(400, "ValidationFailed", "ratePerSecond must be > 0 and burst >= 1.")
    sandbox.limiter.configure(per_second, burst)
    return PortalJSONResponse({"ratePerSecond": Decimal(str(per_second)), "burst": burst})


@router.get("/users")
async def users(request: Request) -> PortalJSONResponse:
    """GET /__sandbox/users (README §9)."""
    return PortalJSONResponse(
        [
            {"email": u.email, "mfaMethod": u.mfa_method, "roles": u.roles}
            for u in demo_users(sandbox_of(request).state)
        ]
    )


@router.get("/ground-truth/payments")
async def ground_truth_payments(request: Request) -> PortalJSONResponse:
    """GET /__sandbox/ground-truth/payments (README §9)."""
    state = sandbox_of(request).state
    bill_id = request.query_params.get("bill", "")
    bill = state.bill(bill_id)
    if bill is None:
        raise not_found("Bill")
    payments = [state.payment(pid) for pid in bill.payment_ids]
    return PortalJSONResponse([shape.payment(state, p) for p in payments if p is not None])


@router.post("/sessions/revoke")
async def revoke(request: Request) -> PortalJSONResponse:
    """POST /__sandbox/sessions/revoke (README §9)."""
    sandbox = sandbox_of(request)
    body = await _json(request)
    user_id = None
    if body.get("email"):
        user = sandbox.state.users_by_email.get(str(body["email"]).lower())
        if user is None:
            raise not_found("User")
        user_id = user.user_id
    return PortalJSONResponse({"revoked": auth.revoke_sessions(sandbox.state, user_id)})


# -- mutations "as another portal user would" ------------------------------------------------------
def _user(
    sandbox: Sandbox, body: dict[str, Any], default_role: Role | None = None, company_id: str | None = None
) -> User:
    state = sandbox.state
    email = body.get("userEmail")
    if email:
        user = state.users_by_email.get(str(email).lower())
        if user is None:
            raise not_found("User")
        return user
    if default_role is not None and company_id is not None:
        for (user_id, cid), member in state.memberships.items():
            if cid == company_id and member.role is default_role:
                return state.users[user_id]
    raise PortalError(400, "ValidationFailed", "userEmail is required.")


def _need(state_lookup: Any, name: str) -> Any:
    if state_lookup is None:
        raise not_found(name)
    return state_lookup


def _company(state: Any, body: dict[str, Any]) -> tuple[str, Any]:
    """The company a mutation names (`companyId`), or the first one."""
    company_id = str(body.get("companyId") or next(iter(state.companies)))
    company = state.companies.get(company_id)
    if company is None:
        raise PortalError(404, "CompanyNotFound", "Company was not found.")
    return company_id, company


def _contact_currency(body: dict[str, Any], default: str) -> str:
    currency = str(body.get("currency") or default)
    if currency not in ("CAD", "USD", "EUR"):
        raise PortalError(400, "ValidationFailed", "currency must be CAD, USD or EUR.")
    return currency


def _create_vendor(state: Any, body: dict[str, Any]) -> str:
    """A payee added by a portal user: paid by cheque, in the company's currency unless given."""
    company_id, company = _company(state, body)
    name = str(body.get("name") or f"New Payee {state.seq + 1}")
    currency = _contact_currency(body, company.base_currency)
    method = PayeeMethod(state.new_id(), "Cheque", currency, None, None, None, "100 King St W, Toronto ON")
    vendor = Vendor(
        created=state.now, modified=state.now, seq=0, vendor_id=state.new_id(), company_id=company_id,
        display_name=name, email=None, currency=currency, network_connected=False,
        payment_methods=[method], default_payment_method_id=method.payment_method_id, accounting=None,
    )  # fmt: skip
    state.add(vendor, company_id, vendor.vendor_id)
    return vendor.vendor_id


def _create_customer(state: Any, body: dict[str, Any]) -> str:
    """A payer added by a portal user: no pre-authorized debit agreement, no card, in the company's
    currency unless given."""
    company_id, company = _company(state, body)
    name = str(body.get("name") or f"New Payer {state.seq + 1}")
    currency = _contact_currency(body, company.base_currency)
    customer = Customer(
        created=state.now, modified=state.now, seq=0, customer_id=state.new_id(), company_id=company_id,
        display_name=name, email=str(body.get("email") or f"billing@payer-{state.seq + 1}.example"),
        currency=currency, pad_status="None", card_last4=None, accounting=None,
    )  # fmt: skip
    state.add(customer, company_id, customer.customer_id)
    return customer.customer_id


@router.post("/mutate")
async def mutate(request: Request) -> PortalJSONResponse:
    """POST /__sandbox/mutate (README §9)."""
    sandbox = sandbox_of(request)
    state = sandbox.state
    body = await _json(request)
    action = body.get("action")
    changed: list[str] = []
    if action in ("createBills", "modifyBills"):
        company_id = str(body.get("companyId") or next(iter(state.companies)))
        if company_id not in state.companies:
            raise PortalError(404, "CompanyNotFound", "Company was not found.")
        count = int(body.get("count", 1))
        if action == "createBills":
            author = _user(sandbox, body, Role.ACCOUNTANT, company_id)
            if body.get("vendorId"):
                vendor_ids = [str(body["vendorId"])]
                found = state.get(Vendor, vendor_ids[0])
                if found is None or found.company_id != company_id:
                    raise not_found("Vendor")
            else:
                vendor_ids = state.index(company_id, "vendor").ordered_ids()
            vendors = sorted((state.objects["vendor"][v] for v in vendor_ids), key=lambda v: v.vendor_id)
            today = local_date(state.now)
            for n in range(count):
                vendor: Vendor = vendors[n % len(vendors)]
                amount = cents(10_000 + state.rng.randrange(0, 300_000))
                line = LineItem(state.new_id(), "Services", Decimal(1), amount, amount, "5000")
                bill = payables.create_bill(
                    state, company_id, author, vendor, f"EXT-{state.seq + 1:07d}-{n}", vendor.currency, today,
                    today + timedelta(days=30), [line], None, "Manual", None,
                )  # fmt: skip
                changed.append(bill.bill_id)
        else:
            ids = list(state.index(company_id, "bill").ordered_ids()[:count])
            for bill_id in ids:
                bill = state.objects["bill"][bill_id]
                bill.memo = f"Edited by another user at {timestamp(state.now)}"
                state.touch_bill(bill)
                changed.append(bill_id)
    elif action == "createVendor":
        changed.append(_create_vendor(state, body))
    elif action == "createCustomer":
        changed.append(_create_customer(state, body))
    elif action in ("approveBill", "rejectBill"):
        bill = _need(state.bill(str(body.get("billId"))), "Bill")
        payables.decide_bill(state, bill, _user(sandbox, body), action == "approveBill", body.get("comment"))
        changed.append(bill.bill_id)
    elif action == "createPayment":
        bill = _need(state.bill(str(body.get("billId"))), "Bill")
        user = _user(sandbox, body)
        account = _pick_account(state.objects["bankAccount"].values(), bill)
        method = PaymentMethod(body["paymentMethod"]) if body.get("paymentMethod") else None
        amount = money(Decimal(str(body["amount"]))) if body.get("amount") is not None else bill.open_balance
        try:
            debit_date = (
                local_date(state.now)
                if not body.get("requestedDebitDate")
                else datetime.fromisoformat(str(body["requestedDebitDate"])).date()
            )
        except ValueError as exc:
            raise invalid_field(
                "requestedDebitDate", "requestedDebitDate must be a date (YYYY-MM-DD)."
            ) from exc
        payment = payables.create_payment(
            state,
            user,
            bill,
            amount,
            account,
            debit_date,
            method,
            None,
            body.get("memo"),
            body.get("externalReference"),
        )
        changed.append(payment.payment_id)
    elif action == "deleteBill":  # as another user would with the Bills page's Delete
        bill = _need(state.bill(str(body.get("billId"))), "Bill")
        payables.delete_bill(state, bill)
        changed.append(bill.bill_id)
    elif action == "deleteVendor":
        vendor = _need(state.get(Vendor, str(body.get("vendorId"))), "Vendor")
        payables.delete_vendor(state, vendor)
        changed.append(vendor.vendor_id)
    elif action == "deleteCustomer":
        customer = _need(state.get(Customer, str(body.get("customerId"))), "Customer")
        receivables.delete_customer(state, customer)
        changed.append(customer.customer_id)
    elif action in ("publishTerms", "acceptTerms"):
        if action == "publishTerms":  # every user must accept them again before using the portal
            state.publish_terms()
        else:  # as the person would at /terms in their own browser
            user = _user(sandbox, body)
            state.accept_terms(user.user_id)
            changed.append(user.user_id)
        sandbox.dirty = True
        return PortalJSONResponse(
            {"changed": changed, "termsVersion": state.terms_version, **_clock_view(sandbox)}
        )
    else:
        changed.extend(_payment_or_invoice_mutation(sandbox, action, body))
    sandbox.dirty = True
    return PortalJSONResponse({"changed": changed, **_clock_view(sandbox)})


def _pick_account(accounts: Any, bill: Bill) -> BankAccount:
    candidates = [
        a for a in accounts if a.company_id == bill.company_id and a.verification_status == "Verified"
    ]
    same = [a for a in candidates if a.currency == bill.currency and a.required_approvals <= 1]
    chosen = (same or candidates)[0]
    assert isinstance(chosen, BankAccount)
    return chosen


def _payment_or_invoice_mutation(sandbox: Sandbox, action: Any, body: dict[str, Any]) -> list[str]:
    state = sandbox.state
    if action in ("approvePayment", "rejectPayment"):
        payment: Payment = _need(state.payment(str(body.get("paymentId"))), "Payment")
        user = _user(sandbox, body)
        member = state.membership(user.user_id, payment.company_id)
        if member is None:
            raise PortalError(404, "CompanyNotFound", "User is not a member of the payment's company.")
        payables.decide_payment(state, payment, user, action == "approvePayment", member.permissions)
        return [payment.payment_id]
    if action in (
        "completePayment",
        "failPayment",
        "returnPayment",
        "holdPayment",
        "releasePayment",
        "claimPayment",
    ):
        payment = _need(state.payment(str(body.get("paymentId"))), "Payment")
        if action == "completePayment":
            payables.complete_payment(state, payment)
        elif action in ("failPayment", "returnPayment"):
            try:
                reason = FailureReason(
                    body.get("reason", "InsufficientFunds" if action == "failPayment" else "InvalidAccount")
                )
            except ValueError as exc:
                raise PortalError(
                    400, "ValidationFailed", f"reason must be one of {[r.value for r in FailureReason]}"
                ) from exc
            if payment.status in payables.DEAD_PAYMENT_STATUSES:
                raise PortalError(409, "InvalidState", f"Payment is {payment.status.value}.")
            status = PaymentStatus.FAILED if action == "failPayment" else PaymentStatus.RETURNED
            payables.fail_payment(state, payment, status, reason)
        elif action == "holdPayment":
            payables.hold_payment(state, payment, str(body.get("reason", "Compliance review")))
        elif action == "releasePayment":
            payables.release_payment(state, payment)
        else:
            payables.claim_payment(state, payment)
        return [payment.payment_id]
    if action == "setNsf":
        account: BankAccount = _need(state.get(BankAccount, str(body.get("bankAccountId"))), "Bank account")
        account.nsf = bool(body.get("value", True))
        return [account.bank_account_id]
    if action == "setPayeeReturn":
        vendor: Vendor = _need(state.get(Vendor, str(body.get("vendorId"))), "Vendor")
        wanted = body.get("reason")
        for payee_method in vendor.payment_methods:
            payee_method.return_reason = FailureReason(wanted) if wanted else None
        return [vendor.vendor_id]
    if action == "viewInvoice":
        invoice: Invoice = _need(state.get(Invoice, str(body.get("invoiceId"))), "Invoice")
        receivables.mark_viewed(state, invoice)
        return [invoice.invoice_id]
    if action == "customerPays":
        invoice = _need(state.get(Invoice, str(body.get("invoiceId"))), "Invoice")
        customer: Customer = _need(state.get(Customer, invoice.customer_id), "Customer")
        amount = (
            money(Decimal(str(body["amount"]))) if body.get("amount") is not None else invoice.balance_due
        )
        how = str(body.get("method", "Card" if customer.card_last4 else "PreAuthorizedDebit"))
        collected = receivables.create_customer_payment(
            state, customer, how, amount, local_date(state.now), [invoice.invoice_id]
        )
        return [collected.customer_payment_id]
    raise PortalError(400, "ValidationFailed", f"Unknown action {action!r}.")
