"""A real-browser sign-in fails as the HTTP one does: the portal down, slow or answering 5xx is
UpstreamUnavailable (with its status), never a Playwright error, a drift report or a long hang."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from conftest import free_port
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.upstream import (
    Credentials,
    MemoryStateStore,
    PortalSession,
    RateLimited,
    ThrottleConfig,
    UpstreamUnavailable,
    browser,
)
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import CONTROLLER, PASSWORD, TOTP_SECRET, Control, run
from writes.conftest import Gateway, make_gateway  # noqa: F401 - the fixture, for the gateway test

CHROMIUM = Path(os.environ.get("PLOOTO_API_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"chromium is not installed at {CHROMIUM} (CI installs it)"
)
pytest.importorskip("playwright.async_api", reason="playwright (the `browser` extra) is not installed")

STEP_MS = 1500  # how long one browser step may take in these tests (30 s by default)


def _login_error(session: PortalSession) -> UpstreamUnavailable:
    async def scenario() -> None:
        try:
            await session.ensure_logged_in()
        finally:
            await session.aclose()

    with pytest.raises(UpstreamUnavailable) as caught:
        run(scenario())
    error = caught.value
    assert PASSWORD not in str(error) and TOTP_SECRET not in str(error)
    # Nothing of Playwright's is kept: its text can quote what was typed into the page.
    chained: BaseException | None = error
    while chained is not None:
        assert not type(chained).__module__.startswith("playwright"), repr(chained)
        chained = chained.__cause__ or chained.__context__
    assert session.pending_mfa is None
    return error


def test_portal_unreachable_is_upstream_unavailable() -> None:
    session = PortalSession(
        f"http://127.0.0.1:{free_port()}",  # nothing listens there
        Credentials(CONTROLLER, PASSWORD, TOTP_SECRET),
        MemoryStateStore(),
        login_mode="browser",
    )
    error = _login_error(session)
    assert str(error) == "could not reach the portal: net::ERR_CONNECTION_REFUSED (GET /login)"
    assert error.status_code is None


def test_slow_login_page_times_out_within_the_step_timeout(
    make_session: SessionFactory, control: Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser, "DEFAULT_TIMEOUT_MS", STEP_MS, raising=False)
    control.fault(kind="latency", method="GET", pathPattern="^/login", latencyMs=8000)
    started = time.monotonic()
    error = _login_error(make_session(login_mode="browser"))
    assert str(error) == "the portal timed out (GET /login)"
    assert time.monotonic() - started < 7.5  # the step's timeout, not the portal's 8 s (nor 30 s)


@pytest.mark.parametrize("status", [503, 500])
def test_login_page_5xx_is_unavailable_with_its_status(
    make_session: SessionFactory, control: Control, status: int
) -> None:
    control.fault(kind="error", method="GET", pathPattern="^/login", status=status)
    error = _login_error(make_session(login_mode="browser"))
    assert (str(error), error.status_code) == (f"the portal answered {status} (GET /login)", status)


def test_login_page_5xx_reads_as_in_http_mode(make_session: SessionFactory, control: Control) -> None:
    control.fault(kind="error", method="GET", pathPattern="^/login", status=503)
    fast = ThrottleConfig(initial_rate=40.0, max_rate=100.0, max_attempts=1)
    over_http = _login_error(make_session(throttle=fast))
    in_browser = _login_error(make_session(login_mode="browser"))
    assert (type(in_browser), str(in_browser), in_browser.status_code) == (
        type(over_http),
        str(over_http),
        over_http.status_code,
    )


def test_5xx_answer_to_the_login_form_is_unavailable(make_session: SessionFactory, control: Control) -> None:
    control.fault(kind="error", method="POST", pathPattern="^/login", status=502, count=1)
    error = _login_error(make_session(login_mode="browser"))
    assert (str(error), error.status_code) == ("the portal answered 502 (POST /login)", 502)


def test_429_answer_to_the_login_form_is_rate_limited(make_session: SessionFactory, control: Control) -> None:
    control.rate_limit(0.01, 1)  # the login page takes the only token: the form's answer is a 429
    session = make_session(login_mode="browser")

    async def scenario() -> None:
        try:
            await session.ensure_logged_in()
        finally:
            await session.aclose()

    with pytest.raises(RateLimited) as caught:
        run(scenario())
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1


def test_gateway_with_a_browser_login_and_the_portal_slow(
    make_gateway: Callable[..., Gateway],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`?fresh=true` answers 503 upstream_unavailable (not a 500), and a sync marks the connection."""
    monkeypatch.setattr(browser, "DEFAULT_TIMEOUT_MS", STEP_MS, raising=False)
    gateway = make_gateway()  # connected and synced over HTTP, then switched to the browser
    with transaction(gateway.sessions()) as session:
        session.execute(
            update(models.Connection)
            .where(models.Connection.id == gateway.connection_id)
            .values(login_mode="browser")
        )
    bill = gateway.bill(status="approved")
    gateway.control.post("/sessions/revoke", json={}).raise_for_status()  # the next read signs in
    gateway.fault(kind="latency", method="GET", pathPattern="^/login", latencyMs=8000)

    fresh = gateway.get(f"/bills/{bill.id}?fresh=true")
    assert fresh.status_code == 503, fresh.text
    assert fresh.json()["error"]["code"] == "upstream_unavailable"

    report = gateway.sync()
    assert not report.ok
    connection = gateway.get(f"/connections/{gateway.connection_id}").json()
    assert connection["state"] == "upstream_unavailable", connection
