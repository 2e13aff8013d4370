"""The portal's HTML pages: sign-in, two-step verification, new terms of service, "Select your
company", dashboard, logout."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from plooto_sandbox import auth
from plooto_sandbox.business_days import local_date
from plooto_sandbox.faults import SESSION_COOKIE
from plooto_sandbox.instance import Sandbox, sandbox_of
from plooto_sandbox.model import BillStatus, InvoiceStatus, PaymentStatus
from plooto_sandbox.money import money, timestamp

ANTIFORGERY_COOKIE = ".Plooto.Antiforgery"
XSRF_COOKIE = "XSRF-TOKEN"
DEVICE_COOKIE = ".Plooto.TrustedDevice"
FORM_TOKEN_FIELD = "__RequestVerificationToken"

templates = Environment(
    loader=PackageLoader("plooto_sandbox", "templates"), autoescape=select_autoescape(["html"])
)
router = APIRouter()

ERROR_TEXT = {
    "InvalidCredentials": "The email or password you entered is incorrect.",
    "AntiforgeryTokenInvalid": "Your form expired. Please reload the page and try again.",
    "InvalidCode": "That verification code is not valid.",
    "TermsAcceptanceRequired": "Please check the box to confirm that you agree to the Terms of Service.",
}


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("signed_in", False)
    return HTMLResponse(templates.get_template(template).render(**context), status_code=status)


def _redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


def _antiforgery(request: Request, sandbox: Sandbox) -> tuple[str, str]:
    """The browser's anti-forgery cookie (new if absent) and the form token bound to it."""
    cookie = request.cookies.get(ANTIFORGERY_COOKIE) or secrets.token_urlsafe(24)
    return cookie, auth.form_token(sandbox.secret, cookie)


def _with_antiforgery(response: Response, cookie: str, sandbox: Sandbox) -> Response:
    response.set_cookie(
        ANTIFORGERY_COOKIE, cookie, httponly=True, samesite="strict", secure=sandbox.config.secure_cookies
    )
    return response


def _locked_message(email: str) -> str:
    return f"The account for user {email} has been temporarily locked. Please contact Plooto support for assistance."


def _login_page(
    request: Request, sandbox: Sandbox, status: int, code: str | None, email: str = ""
) -> Response:
    cookie, token = _antiforgery(request, sandbox)
    message = _locked_message(email) if code == "AccountLocked" else ERROR_TEXT.get(code or "", "")
    locked_until = None
    user = sandbox.state.users_by_email.get(email.lower())
    if code == "AccountLocked" and user is not None and user.locked_until is not None:
        locked_until = timestamp(user.locked_until)
    page = _page(
        "login.html",
        status,
        locked_until=locked_until,
        title="Sign In",
        form_token=token,
        error_code=code,
        error_message=message,
        email=email,
    )
    return _with_antiforgery(page, cookie, sandbox)


def _session(request: Request, sandbox: Sandbox) -> auth.Session | None:
    session = auth.live_session(sandbox.state, sandbox.config, request.cookies.get(SESSION_COOKIE))
    if session is not None:
        auth.refresh(sandbox.state, session)
    return session


def _landing(sandbox: Sandbox, session: auth.Session) -> str:
    """Where a signed-in browser goes next: the verification step, new terms to accept, or the app."""
    if session.mfa_pending:
        return "/mfa"
    if sandbox.state.terms_pending(session.user_id):
        return "/terms"
    return "/select-company"


def _signed_in_context(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    _, token = _antiforgery(request, sandbox)
    return {"signed_in": True, "logout_token": token}


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root(request: Request) -> Response:
    """GET / (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    return _redirect(_landing(sandbox, session))


@router.api_route("/login", methods=["GET", "HEAD"], include_in_schema=False)
async def login_form(request: Request) -> Response:
    """GET /login (README §2)."""
    return _login_page(request, sandbox_of(request), 200, None)


@router.post("/login", include_in_schema=False)
async def login_submit(request: Request) -> Response:
    """POST /login (README §2)."""
    sandbox = sandbox_of(request)
    form = await request.form()
    email = str(form.get("email", "")).strip()
    if not auth.form_token_valid(
        sandbox.secret, request.cookies.get(ANTIFORGERY_COOKIE), str(form.get(FORM_TOKEN_FIELD, ""))
    ):
        return _login_page(request, sandbox, 400, "AntiforgeryTokenInvalid", email)
    outcome = auth.attempt_login(
        sandbox.state,
        sandbox.config,
        email,
        str(form.get("passphrase", "")),
        request.cookies.get(DEVICE_COOKIE),
    )
    if outcome.session is None:
        status = 423 if outcome.error_code == "AccountLocked" else 401
        return _login_page(request, sandbox, status, outcome.error_code, email)
    sandbox.dirty = True
    response = _redirect(_landing(sandbox, outcome.session))
    secure = sandbox.config.secure_cookies
    response.set_cookie(SESSION_COOKIE, outcome.session.token, httponly=True, samesite="lax", secure=secure)
    response.set_cookie(
        XSRF_COOKIE, outcome.session.xsrf_token, httponly=False, samesite="strict", secure=secure
    )
    return response


def _mfa_page(
    request: Request, sandbox: Sandbox, session: auth.Session, status: int, code: str | None
) -> Response:
    user = sandbox.state.users[session.user_id]
    cookie, token = _antiforgery(request, sandbox)
    phone_hint = f"***-***-{(user.phone or '')[-4:]}"
    page = _page(
        "mfa.html",
        status,
        title="Two-Step Verification",
        form_token=token,
        method=user.mfa_method,
        phone_hint=phone_hint,
        error_code=code,
        error_message=ERROR_TEXT.get(code or "", ""),
    )
    return _with_antiforgery(page, cookie, sandbox)


@router.get("/mfa", include_in_schema=False)
async def mfa_form(request: Request) -> Response:
    """GET /mfa (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if not session.mfa_pending:
        return _redirect(_landing(sandbox, session))
    user = sandbox.state.users[session.user_id]
    if user.mfa_method == "Sms" and session.sms_code is None:
        auth.issue_sms_code(sandbox.state, sandbox.config, session, user)
    return _mfa_page(request, sandbox, session, 200, None)


@router.post("/mfa", include_in_schema=False)
async def mfa_submit(request: Request) -> Response:
    """POST /mfa (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if not session.mfa_pending:
        return _redirect(_landing(sandbox, session))
    form = await request.form()
    if not auth.form_token_valid(
        sandbox.secret, request.cookies.get(ANTIFORGERY_COOKIE), str(form.get(FORM_TOKEN_FIELD, ""))
    ):
        return _mfa_page(request, sandbox, session, 400, "AntiforgeryTokenInvalid")
    user = sandbox.state.users[session.user_id]
    if not auth.verify_mfa(sandbox.state, sandbox.config, session, user, str(form.get("code", ""))):
        if auth.is_locked(sandbox.state, user):
            return _login_page(request, sandbox, 423, "AccountLocked", user.email)
        return _mfa_page(request, sandbox, session, 401, "InvalidCode")
    sandbox.dirty = True
    response = _redirect(_landing(sandbox, session))
    if str(form.get("trustDevice", "")).lower() in ("true", "on", "1"):
        device = auth.trust_device(sandbox.state, sandbox.config, user)
        response.set_cookie(
            DEVICE_COOKIE,
            device.token,
            max_age=sandbox.config.trusted_device_days * 86400,
            httponly=True,
            samesite="lax",
            secure=sandbox.config.secure_cookies,
        )
    return response


@router.post("/mfa/resend", include_in_schema=False)
async def mfa_resend(request: Request) -> Response:
    """POST /mfa/resend (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    form = await request.form()
    if not auth.form_token_valid(
        sandbox.secret, request.cookies.get(ANTIFORGERY_COOKIE), str(form.get(FORM_TOKEN_FIELD, ""))
    ):
        return _mfa_page(request, sandbox, session, 400, "AntiforgeryTokenInvalid")
    user = sandbox.state.users[session.user_id]
    if session.mfa_pending and user.mfa_method == "Sms":
        auth.issue_sms_code(sandbox.state, sandbox.config, session, user)
    return _redirect("/mfa")


def _terms_page(
    request: Request, sandbox: Sandbox, session: auth.Session, status: int, code: str | None
) -> Response:
    cookie, token = _antiforgery(request, sandbox)
    page = _page(
        "terms.html",
        status,
        title="Terms of Service",
        form_token=token,
        version=sandbox.state.terms_version,
        user_email=sandbox.state.users[session.user_id].email,
        error_code=code,
        error_message=ERROR_TEXT.get(code or "", ""),
        signed_in=True,
        logout_token=token,
    )
    return _with_antiforgery(page, cookie, sandbox)


@router.get("/terms", include_in_schema=False)
async def terms_form(request: Request) -> Response:
    """GET /terms (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if _landing(sandbox, session) != "/terms":
        return _redirect(_landing(sandbox, session))
    return _terms_page(request, sandbox, session, 200, None)


@router.post("/terms", include_in_schema=False)
async def terms_submit(request: Request) -> Response:
    """POST /terms (README §2): the person agrees to the terms in force."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if _landing(sandbox, session) != "/terms":
        return _redirect(_landing(sandbox, session))
    form = await request.form()
    if not auth.form_token_valid(
        sandbox.secret, request.cookies.get(ANTIFORGERY_COOKIE), str(form.get(FORM_TOKEN_FIELD, ""))
    ):
        return _terms_page(request, sandbox, session, 400, "AntiforgeryTokenInvalid")
    if str(form.get("acceptTerms", "")).lower() not in ("true", "on", "1"):
        return _terms_page(request, sandbox, session, 400, "TermsAcceptanceRequired")
    sandbox.state.accept_terms(session.user_id)
    sandbox.dirty = True
    return _redirect(_landing(sandbox, session))


@router.get("/select-company", include_in_schema=False)
async def select_company(request: Request) -> Response:
    """GET /select-company (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if session.mfa_pending or sandbox.state.terms_pending(session.user_id):
        return _redirect(_landing(sandbox, session))
    state = sandbox.state
    user = state.users[session.user_id]
    rows = []
    for company in state.companies_of(user.user_id):
        outstanding = sum(
            1
            for account in state.objects["bankAccount"].values()
            if account.company_id == company.company_id and account.verification_status != "Verified"
        )
        rows.append(
            {
                "company_id": company.company_id,
                "name": company.name,
                "status": company.status,
                "outstanding": outstanding,
            }
        )
    return _page(
        "select_company.html",
        title="Select your company",
        companies=rows,
        user_name=user.display_name,
        user_email=user.email,
        **_signed_in_context(request, sandbox),
    )


@router.get("/company/{company_id}", include_in_schema=False)
async def open_company(request: Request, company_id: str) -> Response:
    """GET /company/{company_id} (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if session.mfa_pending or sandbox.state.terms_pending(session.user_id):
        return _redirect(_landing(sandbox, session))
    if sandbox.state.membership(session.user_id, company_id) is None:
        return _redirect("/select-company")
    session.selected_company_id = company_id
    return _redirect("/dashboard")


@router.get("/dashboard", include_in_schema=False)
async def dashboard(request: Request) -> Response:
    """GET /dashboard (README §2)."""
    sandbox = sandbox_of(request)
    session = _session(request, sandbox)
    if session is None:
        return _redirect("/login")
    if session.mfa_pending or sandbox.state.terms_pending(session.user_id):
        return _redirect(_landing(sandbox, session))
    state = sandbox.state
    company_id = session.selected_company_id
    if company_id is None or company_id not in state.companies:
        return _redirect("/select-company")
    company = state.companies[company_id]
    payments = [p for p in state.objects["payment"].values() if p.company_id == company_id]
    in_transit = {
        PaymentStatus.PENDING,
        PaymentStatus.FUNDS_DEBITED,
        PaymentStatus.CLEARING,
        PaymentStatus.EXCHANGING,
        PaymentStatus.PROCESSING,
    }
    outstanding_bills = sum(
        1
        for b in state.objects["bill"].values()
        if b.company_id == company_id and b.status in (BillStatus.OPEN, BillStatus.PARTIALLY_PAID)
    )
    outstanding_invoices = sum(
        1
        for i in state.objects["invoice"].values()
        if i.company_id == company_id
        and i.status
        in (InvoiceStatus.SENT, InvoiceStatus.VIEWED, InvoiceStatus.OVERDUE, InvoiceStatus.PARTIALLY_PAID)
    )
    return _page(
        "dashboard.html",
        title="Dashboard",
        company_id=company_id,
        company_name=company.name,
        approvals=sum(1 for p in payments if p.status is PaymentStatus.APPROVAL_REQUIRED),
        pending=sum(1 for p in payments if p.status in in_transit),
        outstanding_bills=outstanding_bills,
        outstanding_invoices=outstanding_invoices,
        balances=[(c, format(money(v), "f")) for c, v in sorted(company.instant_balances.items())],
        today=local_date(state.now).isoformat(),
        **_signed_in_context(request, sandbox),
    )


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """POST /logout (README §2)."""
    sandbox = sandbox_of(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = sandbox.state.sessions.get(token) if token else None
    form = await request.form()
    header = request.headers.get("x-xsrf-token")
    valid = auth.form_token_valid(
        sandbox.secret, request.cookies.get(ANTIFORGERY_COOKIE), str(form.get(FORM_TOKEN_FIELD, ""))
    )
    if session is not None and header and secrets.compare_digest(header, session.xsrf_token):
        valid = True
    if not valid:
        return _page("login.html", 400, title="Sign In", form_token="", error_code="AntiforgeryTokenInvalid",
                     error_message=ERROR_TEXT["AntiforgeryTokenInvalid"], email="")  # fmt: skip
    if token:
        sandbox.state.sessions.pop(token, None)
        sandbox.dirty = True
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(XSRF_COOKIE)
    return response
