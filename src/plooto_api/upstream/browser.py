"""Optional real-browser sign-in: Playwright drives Debian's chromium through the login and MFA
pages, then hands its cookies to the HTTP client. Data calls stay on plain HTTP.

Needs the `browser` extra (playwright) and a chromium binary (`/usr/bin/chromium` by default).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyotp

from plooto_api.upstream import portal
from plooto_api.upstream._convert import clock_offset, parse_timestamp, retry_after_seconds
from plooto_api.upstream._errors import (
    AccountLocked,
    InvalidCredentials,
    InvalidMfaCode,
    MfaRequired,
    RateLimited,
    TermsNotAccepted,
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
DEFAULT_TIMEOUT_MS = 30_000.0  # the longest any one browser step (a page load, a click) may take
LAUNCH_TIMEOUT_MS = 30_000.0  # the longest chromium may take to start (a busy machine is slow at it)
_NET_ERROR = re.compile(r"net::ERR_[A-Z_]+")


async def browser_login(
    base_url: str,
    credentials: Credentials,
    portal_now: Callable[[], datetime],
    cookies: list[dict[str, Any]],
    *,
    executable_path: str = CHROMIUM_PATH,
    timeout_ms: float | None = None,
    learn_clock: bool = True,
) -> list[dict[str, Any]]:
    """Sign in with a headless chromium; returns the browser's cookies for the HTTP client.

    `cookies` (e.g. the trusted-device cookie) are given to the browser first. A TOTP challenge is
    answered from the stored secret for the portal's time; an SMS challenge raises MfaRequired — the
    pending login's cookies are then in `MfaRequired.cookies` so the HTTP client can finish it with
    the code. A login that lands on the portal's new terms of service raises TermsNotAccepted (its
    cookies in `TermsNotAccepted.cookies`): nothing on that page is touched, only a person accepts.

    The portal's time is what its pages' Date headers say, as for the HTTP client (the sandbox's
    clock is not this machine's); `portal_now` only when no page had one, or always when
    `learn_clock` is False (a clock the caller was given, which the HTTP client also prefers).

    Fails as the HTTP login does: UpstreamUnavailable when the portal cannot be reached, times out
    (every browser step waits at most `timeout_ms`) or answers 5xx, RateLimited on a 429 — never
    with a Playwright error, whose text is not kept (it may quote what was typed into the page).
    """
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise UpstreamUnavailable("browser login needs the `browser` extra (playwright)") from exc

    timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
    clock = _PortalClock(portal_now, learn=learn_clock)
    step = "starting chromium"
    try:
        with tempfile.TemporaryDirectory(prefix="plooto-api-chromium-") as profile:
            async with async_playwright() as playwright:
                # Starting chromium is this machine's work, not a portal step: its own bound. A failure
                # is reported below like the others ("the browser failed (starting chromium)").
                context = await playwright.chromium.launch_persistent_context(
                    profile,
                    executable_path=executable_path,
                    headless=True,
                    args=list(CHROMIUM_ARGS),
                    timeout=LAUNCH_TIMEOUT_MS,
                )
                step = "preparing chromium"
                try:
                    context.set_default_timeout(timeout)
                    if cookies:
                        await context.add_cookies([_to_browser(c, base_url) for c in cookies])  # type: ignore[misc]
                    page = context.pages[0] if context.pages else await context.new_page()
                    step = f"GET {portal.LOGIN_PATH}"
                    response = await page.goto(f"{base_url}{portal.LOGIN_PATH}")
                    _check_status(response, step, clock)
                    if await page.locator(f"#{portal.LOGIN_FORM.form_id}").count() == 0:
                        status = f" (HTTP {response.status})" if response is not None else ""
                        raise UpstreamChanged(
                            "login", [f"login: form '{portal.LOGIN_FORM.form_id}' not found{status}"]
                        )
                    await page.fill(portal.LOGIN_USER_SELECTOR, credentials.username)
                    await page.fill(portal.LOGIN_PASSWORD_SELECTOR, credentials.password)
                    step = f"POST {portal.LOGIN_PATH}"
                    async with page.expect_navigation() as navigation:
                        await page.get_by_role("button", name=portal.LOGIN_SUBMIT_TEXT).click()
                    _check_status(await navigation.value, step, clock)
                    await _raise_page_error(page, clock)
                    path = _path(page.url)
                    if path.startswith(portal.MFA_PATH):
                        step = f"GET {portal.MFA_PATH}"
                        form = page.locator(f"#{portal.MFA_FORM.form_id}")
                        method = portal.MFA_METHODS.get(
                            await form.get_attribute(portal.MFA_METHOD_ATTR) or ""
                        )
                        if method == "totp" and credentials.totp_secret:
                            at = clock.now()
                            await page.fill(
                                portal.MFA_CODE_SELECTOR, pyotp.TOTP(credentials.totp_secret).at(at)
                            )
                            await page.check(f"input[name={portal.MFA_TRUST_FIELD}]")
                            step = f"POST {portal.MFA_PATH}"
                            async with page.expect_navigation() as navigation:
                                await form.locator("button[type=submit]").click()
                            _check_status(await navigation.value, step, clock)
                            try:
                                await _raise_page_error(page, clock)
                            except InvalidMfaCode:
                                # Usually a wrong secret, or a portal clock unlike the one learned.
                                raise InvalidMfaCode(
                                    f"the portal refused the TOTP code computed for {at:%Y-%m-%dT%H:%M:%SZ}"
                                ) from None
                        else:
                            error = MfaRequired(MfaChallenge("sms" if method == "sms" else "totp"))
                            error.cookies = _from_browser(await context.cookies())  # type: ignore[attr-defined]
                            raise error
                    if _path(page.url).startswith(portal.TERMS_PATH):
                        # New terms of service: only the person accepts them; the page is left as is.
                        refused = TermsNotAccepted(at=clock.now())
                        refused.cookies = _from_browser(await context.cookies())  # type: ignore[attr-defined]
                        raise refused
                    return _from_browser(await context.cookies())
                finally:
                    with contextlib.suppress(PlaywrightError):
                        await context.close()
    except PlaywrightError as exc:
        # Not the error's text: besides the URL it can hold the browser's call log.
        reason = _NET_ERROR.search(str(exc))
        if not step.startswith(("GET ", "POST ")):
            failure = UpstreamUnavailable(f"the browser failed ({step}): {type(exc).__name__}")
        elif isinstance(exc, PlaywrightTimeout):
            failure = UpstreamUnavailable(f"the portal timed out ({step})")
        else:
            failure = UpstreamUnavailable(
                f"could not reach the portal: {reason.group(0) if reason else type(exc).__name__} ({step})"
            )
    raise failure  # outside the except block, so the Playwright error is not chained to it


class _PortalClock:
    """The portal's time as its pages' Date headers tell it (what the HTTP client's clock learns
    from), else the caller's `portal_now`."""

    def __init__(self, portal_now: Callable[[], datetime], *, learn: bool) -> None:
        self._portal_now = portal_now
        self._learn = learn
        self._offset: float | None = None  # portal time - local time, seconds

    def note(self, response: Any) -> None:
        if not self._learn or response is None:
            return
        offset = clock_offset(response.headers.get("date"))
        if offset is not None:
            self._offset = offset

    def now(self) -> datetime:
        if self._offset is None:
            return self._portal_now()
        return datetime.fromtimestamp(time.time() + self._offset, UTC)


def _check_status(response: Any, step: str, clock: _PortalClock) -> None:
    """As the HTTP client: a 5xx is the portal unavailable, a 429 its rate limit. Other statuses are
    left to the page's checks: a form's refusals (401, 423) are pages with an error code, and a
    login page that is not there (404) is the portal changed, as for the HTTP client."""
    if response is None:  # no new document (e.g. the same URL with a fragment): nothing to check
        return
    clock.note(response)
    status = int(response.status)
    if status == 429:
        # Playwright gives header names in lower case.
        raise RateLimited(
            retry_after=retry_after_seconds(response.headers.get(portal.RETRY_AFTER_HEADER.lower()))
        )
    if status >= 500:
        raise UpstreamUnavailable(f"the portal answered {status} ({step})", status_code=status)


async def _raise_page_error(page: Any, clock: _PortalClock) -> None:
    marker = page.locator(f"[{portal.ERROR_CODE_ATTR}]")
    if await marker.count() == 0:
        return
    code = await marker.first.get_attribute(portal.ERROR_CODE_ATTR)
    if code == portal.LOGIN_ERROR_LOCKED:
        # When the lock ends, by the portal's clock, as the HTTP login reads it: without it the
        # gateway waits a default spell of its own, and says no time.
        until = page.locator(f"[{portal.LOCKED_UNTIL_ATTR}]")
        ends = await until.first.get_attribute(portal.LOCKED_UNTIL_ATTR) if await until.count() else None
        raise AccountLocked("the portal has temporarily locked this account", until=parse_timestamp(ends),
                            at=clock.now())  # fmt: skip
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
