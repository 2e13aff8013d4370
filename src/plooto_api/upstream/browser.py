"""Optional real-browser sign-in: Playwright drives Debian's chromium through the login and MFA
pages, then hands its cookies to the HTTP client. Data calls stay on plain HTTP.

Needs the `browser` extra (playwright) and a chromium binary (`/usr/bin/chromium` by default).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pyotp

from plooto_api.upstream import portal
from plooto_api.upstream._errors import (
    AccountLocked,
    InvalidCredentials,
    InvalidMfaCode,
    MfaRequired,
    UpstreamChanged,
    UpstreamUnavailable,
)
from plooto_api.upstream._models import Credentials, MfaChallenge

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


async def browser_login(
    base_url: str,
    credentials: Credentials,
    portal_now: Callable[[], datetime],
    cookies: list[dict[str, Any]],
    *,
    executable_path: str = CHROMIUM_PATH,
    timeout_ms: float = 30_000,
) -> list[dict[str, Any]]:
    """Sign in with a headless chromium; returns the browser's cookies for the HTTP client.

    `cookies` (e.g. the trusted-device cookie) are given to the browser first. A TOTP challenge is
    answered from the stored secret; an SMS challenge raises MfaRequired — the pending login's
    cookies are then in `MfaRequired.cookies` so the HTTP client can finish it with the code.
    """
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise UpstreamUnavailable("browser login needs the `browser` extra (playwright)") from exc

    with tempfile.TemporaryDirectory(prefix="plooto-api-chromium-") as profile:
        async with async_playwright() as playwright:
            try:
                context = await playwright.chromium.launch_persistent_context(
                    profile, executable_path=executable_path, headless=True, args=list(CHROMIUM_ARGS)
                )
            except PlaywrightError as exc:
                raise UpstreamUnavailable(f"could not start chromium: {type(exc).__name__}") from exc
            try:
                context.set_default_timeout(timeout_ms)
                if cookies:
                    await context.add_cookies([_to_browser(c, base_url) for c in cookies])  # type: ignore[misc]
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(f"{base_url}{portal.LOGIN_PATH}")
                if await page.locator(f"#{portal.LOGIN_FORM.form_id}").count() == 0:
                    raise UpstreamChanged("login", [f"login: form '{portal.LOGIN_FORM.form_id}' not found"])
                await page.fill(portal.LOGIN_USER_SELECTOR, credentials.username)
                await page.fill(portal.LOGIN_PASSWORD_SELECTOR, credentials.password)
                async with page.expect_navigation():
                    await page.get_by_role("button", name=portal.LOGIN_SUBMIT_TEXT).click()
                await _raise_page_error(page)
                path = _path(page.url)
                if path.startswith(portal.MFA_PATH):
                    form = page.locator(f"#{portal.MFA_FORM.form_id}")
                    method = portal.MFA_METHODS.get(await form.get_attribute(portal.MFA_METHOD_ATTR) or "")
                    if method == "totp" and credentials.totp_secret:
                        await page.fill(
                            portal.MFA_CODE_SELECTOR, pyotp.TOTP(credentials.totp_secret).at(portal_now())
                        )
                        await page.check(f"input[name={portal.MFA_TRUST_FIELD}]")
                        async with page.expect_navigation():
                            await form.locator("button[type=submit]").click()
                        await _raise_page_error(page)
                    else:
                        error = MfaRequired(MfaChallenge("sms" if method == "sms" else "totp"))
                        error.cookies = _from_browser(await context.cookies())  # type: ignore[attr-defined]
                        raise error
                return _from_browser(await context.cookies())
            finally:
                await context.close()


async def _raise_page_error(page: Any) -> None:
    marker = page.locator(f"[{portal.ERROR_CODE_ATTR}]")
    if await marker.count() == 0:
        return
    code = await marker.first.get_attribute(portal.ERROR_CODE_ATTR)
    if code == portal.LOGIN_ERROR_LOCKED:
        raise AccountLocked("the portal has temporarily locked this account")
    if code == portal.LOGIN_ERROR_INVALID_CREDENTIALS:
        raise InvalidCredentials("the portal refused the username or password")
    if code == portal.MFA_ERROR_INVALID_CODE:
        raise InvalidMfaCode("the portal refused the verification code")
    raise UpstreamChanged("login", [f"login: unexpected error code {code!r}"])


def _path(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


def _to_browser(cookie: dict[str, Any], base_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": cookie["name"],
        "value": cookie["value"],
        "path": cookie.get("path") or "/",
    }
    out["domain"] = cookie["domain"]
    if cookie.get("expires"):
        out["expires"] = float(cookie["expires"])
    return out


def _from_browser(cookies: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": c["name"],
            "value": c["value"],
            "domain": c["domain"],
            "path": c.get("path") or "/",
            "expires": int(c["expires"]) if c.get("expires", -1) > 0 else None,
            "secure": bool(c.get("secure")),
        }
        for c in cookies
    ]
