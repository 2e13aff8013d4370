"""Real-browser sign-in (Playwright + Debian's chromium); data calls then go over HTTP."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plooto_api.upstream import (
    AccountLocked,
    Credentials,
    InvalidCredentials,
    MemoryStateStore,
    MfaRequired,
    PortalSession,
    ThrottleConfig,
)
from plooto_api.upstream.browser import browser_login
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import CLERK, CONTROLLER, PASSWORD, TOTP_SECRET, Control, first_company, run

CHROMIUM = Path(os.environ.get("PLOOTO_API_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"chromium is not installed at {CHROMIUM} (CI installs it)"
)
pytest.importorskip("playwright.async_api", reason="playwright (the `browser` extra) is not installed")


def test_browser_login_with_totp_then_http_reads(make_session: SessionFactory) -> None:
    store = MemoryStateStore()
    session = make_session(store=store, login_mode="browser")

    async def scenario() -> int:
        company = await first_company(session)
        page = await session.list_changes(company, "bills", modified_since=None)
        await session.aclose()
        return page.total_count

    assert run(scenario()) == 30
    assert session.stats.logins == 1
    assert store.state is not None
    assert ".Plooto.TrustedDevice" in {c["name"] for c in store.state["cookies"]}

    # A restart in HTTP mode reuses the browser's session.
    restarted = make_session(store=store)

    async def again() -> None:
        await first_company(restarted)
        await restarted.aclose()

    run(again())
    assert restarted.stats.logins == 0


def test_browser_login_with_sms_is_finished_over_http(make_session: SessionFactory, control: Control) -> None:
    session = make_session(CLERK, login_mode="browser")

    async def scenario() -> None:
        with pytest.raises(MfaRequired):
            await session.ensure_logged_in()
        await session.submit_mfa_code(control.outbox(kind="Sms")[-1]["code"])
        assert await first_company(session)
        await session.aclose()

    run(scenario())


def test_browser_login_answers_totp_for_the_portal_clock(control: Control) -> None:
    """No clock is given and none was learned: the code is for the portal's time (the sandbox's
    clock is not this machine's), as over HTTP — a code for this machine's time is refused, and
    every refusal counts toward the portal's lockout."""
    portal_time = control.now()
    assert abs((portal_time - datetime.now(UTC)).total_seconds()) > 300  # else this proves nothing
    session = PortalSession(
        control.base_url,
        Credentials(CONTROLLER, PASSWORD, TOTP_SECRET),
        MemoryStateStore(),
        throttle=ThrottleConfig(initial_rate=40.0, max_rate=100.0),
        login_mode="browser",
    )

    async def scenario() -> None:
        await session.ensure_logged_in()
        assert await first_company(session)
        await session.aclose()

    run(scenario())
    assert (session.stats.logins, session.stats.retries) == (1, 0)


def test_browser_login_with_a_given_portal_clock(control: Control) -> None:
    """`learn_clock=False`: the caller's clock (as PortalSession's `portal_clock`) is the portal's."""
    credentials = Credentials(CONTROLLER, PASSWORD, TOTP_SECRET)
    cookies = run(browser_login(control.base_url, credentials, control.now, [], learn_clock=False))
    assert ".Plooto.TrustedDevice" in {c["name"] for c in cookies}


def test_a_browser_sign_in_to_a_locked_login_says_when_the_lock_ends(make_session: SessionFactory) -> None:
    # The HTTP sign-in read the lock's end from the page; the browser's did not, so a connection
    # signed in with a browser stayed locked after the portal had unlocked it, and said no time.
    wrong = make_session(password="wrong-password", login_mode="browser")

    async def scenario() -> AccountLocked:
        try:
            for _ in range(6):  # the portal locks the login at its fifth refusal
                with pytest.raises((InvalidCredentials, AccountLocked)) as refused:
                    await wrong.ensure_logged_in()
                if isinstance(refused.value, AccountLocked):
                    return refused.value
            raise AssertionError("the portal never locked the login")
        finally:
            await wrong.aclose()

    locked = run(scenario())
    assert locked.until is not None and locked.at is not None
    assert locked.until - locked.at == timedelta(minutes=15)  # the sandbox's lock, by its clock
