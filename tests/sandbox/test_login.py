"""The HTML sign-in flow: CSRF form token, TOTP and SMS MFA, trusted devices, lockout, expiry, logout."""

from __future__ import annotations

import pyotp
from fastapi.testclient import TestClient

from sandbox.sandbox_helpers import (
    CLERK,
    CONTROLLER,
    PASSWORD,
    TOTP_SECRET,
    form_token,
    login,
    make_client,
    sandbox_now,
    start_login,
)


def test_login_page_is_an_html_form_with_antiforgery_token(client: TestClient) -> None:
    page = client.get("/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="email"' in page.text and 'id="passphrase"' in page.text and "Sign In" in page.text
    assert form_token(page.text)
    assert ".Plooto.Antiforgery" in page.cookies


def test_login_without_token_is_rejected(client: TestClient) -> None:
    client.get("/login")
    response = client.post(
        "/login", data={"email": CONTROLLER, "passphrase": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 400
    assert 'data-error-code="AntiforgeryTokenInvalid"' in response.text


def test_totp_login_lands_on_select_your_company(client: TestClient) -> None:
    first = start_login(client, CONTROLLER)
    assert first.status_code == 303 and first.headers["location"] == "/mfa"
    assert ".Plooto.Session" in client.cookies and "XSRF-TOKEN" in client.cookies
    # Before MFA the session cannot reach the API or the company list.
    blocked = client.get("/api/companies", headers={"X-XSRF-TOKEN": client.cookies["XSRF-TOKEN"]})
    assert blocked.status_code == 401 and blocked.json()["errorCode"] == "MfaRequired"
    assert client.get("/select-company", follow_redirects=False).headers["location"] == "/mfa"
    page = client.get("/mfa")
    assert 'data-mfa-method="Totp"' in page.text
    code = pyotp.TOTP(TOTP_SECRET).at(sandbox_now(client))
    done = client.post(
        "/mfa",
        data={"code": code, "__RequestVerificationToken": form_token(page.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/select-company"
    landing = client.get("/select-company")
    assert "Select your company" in landing.text
    assert landing.text.count("data-company-id=") == 2


def test_sms_login_reads_code_from_outbox(client: TestClient) -> None:
    start_login(client, CLERK)
    page = client.get("/mfa")
    assert 'data-mfa-method="Sms"' in page.text
    outbox = client.get("/__sandbox/outbox").json()
    assert outbox[-1]["kind"] == "Sms" and outbox[-1]["userEmail"] == CLERK
    bad = client.post("/mfa", data={"code": "000000", "__RequestVerificationToken": form_token(page.text)})
    assert bad.status_code == 401 and 'data-error-code="InvalidCode"' in bad.text
    # A resend invalidates the first code: only the newest works.
    first_code = outbox[-1]["code"]
    client.post("/mfa/resend", data={"__RequestVerificationToken": form_token(page.text)})
    newest = client.get("/__sandbox/outbox", params={"to": CLERK}).json()[-1]["code"]
    if newest != first_code:
        stale = client.post(
            "/mfa", data={"code": first_code, "__RequestVerificationToken": form_token(page.text)}
        )
        assert stale.status_code == 401
    ok = client.post(
        "/mfa",
        data={"code": newest, "__RequestVerificationToken": form_token(page.text)},
        follow_redirects=False,
    )
    assert ok.headers["location"] == "/select-company"


def test_sms_code_expires_with_the_sandbox_clock(client: TestClient) -> None:
    start_login(client, CLERK)
    page = client.get("/mfa")
    code = client.get("/__sandbox/outbox").json()[-1]["code"]
    client.post("/__sandbox/clock", json={"advance_minutes": 11})
    # 11 minutes: the session is still inside its 15-minute idle window, but the code is stale.
    late = client.post("/mfa", data={"code": code, "__RequestVerificationToken": form_token(page.text)})
    assert late.status_code == 401


def test_trusted_device_skips_mfa_next_time(client: TestClient) -> None:
    login(client, CONTROLLER, trust_device=True)
    assert ".Plooto.TrustedDevice" in client.cookies
    client.post("/logout", headers={"X-XSRF-TOKEN": client.cookies["XSRF-TOKEN"]}, follow_redirects=False)
    again = start_login(client, CONTROLLER)
    assert again.headers["location"] == "/select-company"
    # The device cookie belongs to the controller only; the clerk still gets an MFA challenge.
    other = start_login(client, CLERK)
    assert other.headers["location"] == "/mfa"


def test_repeated_failures_lock_the_user_then_unlock(client: TestClient) -> None:
    for _ in range(4):
        assert start_login(client, CONTROLLER, "wrong").status_code == 401
    locked = start_login(client, CONTROLLER, "wrong")
    assert locked.status_code == 423 and "temporarily locked" in locked.text
    assert 'data-locked-until="2026-03-02T14:15:00Z"' in locked.text
    # Even the right password is refused while locked.
    assert start_login(client, CONTROLLER).status_code == 423
    client.post("/__sandbox/clock", json={"advance_minutes": 16})
    assert start_login(client, CONTROLLER).status_code == 303


def test_unknown_user_and_wrong_password_look_the_same(client: TestClient) -> None:
    unknown = start_login(client, "nobody@example.test", "x")
    wrong = start_login(client, CONTROLLER, "x")
    assert unknown.status_code == wrong.status_code == 401
    assert (
        'data-error-code="InvalidCredentials"' in unknown.text
        and 'data-error-code="InvalidCredentials"' in wrong.text
    )


def test_idle_timeout_expires_session() -> None:
    with make_client(session_idle_minutes=15) as client:
        headers = login(client, CONTROLLER)
        client.post("/__sandbox/clock", json={"advance_minutes": 14})
        assert client.get("/api/companies", headers=headers).status_code == 200  # refreshes idle timer
        client.post("/__sandbox/clock", json={"advance_minutes": 14})
        assert client.get("/api/companies", headers=headers).status_code == 200
        client.post("/__sandbox/clock", json={"advance_minutes": 16})
        expired = client.get("/api/companies", headers=headers)
        assert expired.status_code == 401 and expired.json()["errorCode"] == "NotAuthenticated"
        assert client.get("/select-company", follow_redirects=False).headers["location"] == "/login"


def test_absolute_lifetime_expires_active_session() -> None:
    with make_client(session_absolute_hours=1) as client:
        headers = login(client, CONTROLLER)
        for _ in range(4):  # 52 minutes of activity: never idle, still inside the hour
            client.post("/__sandbox/clock", json={"advance_minutes": 13})
            assert client.get("/api/session", headers=headers).status_code == 200
        client.post("/__sandbox/clock", json={"advance_minutes": 13})
        assert client.get("/api/session", headers=headers).status_code == 401


def test_logout_destroys_session(client: TestClient) -> None:
    headers = login(client, CONTROLLER)
    bad = client.post("/logout", follow_redirects=False)
    assert bad.status_code == 400
    out = client.post("/logout", headers=headers, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/api/companies", headers=headers).status_code == 401


def test_open_company_and_dashboard(client: TestClient) -> None:
    login(client, CONTROLLER)
    page = client.get("/select-company")
    company_id = page.text.split('data-company-id="')[1].split('"')[0]
    opened = client.get(f"/company/{company_id}", follow_redirects=False)
    assert opened.headers["location"] == "/dashboard"
    dashboard = client.get("/dashboard")
    assert "Payment Approvals" in dashboard.text and "Plooto Instant" in dashboard.text
    assert (
        client.get("/company/not-a-company", follow_redirects=False).headers["location"] == "/select-company"
    )
