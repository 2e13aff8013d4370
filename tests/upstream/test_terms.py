"""New terms of service in the portal: a sign-in that lands on them, or a signed-in session whose
calls the portal refuses with 403 `TermsNotAccepted`, raises TermsNotAccepted. Nothing is ever sent
that would accept them (a legal agreement: the person accepts, in the portal), and a refused call
does not sign in again: that would land on the same terms."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from plooto_api.upstream import AuthenticationError, PortalSession, TermsNotAccepted
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import CONTROLLER, PASSWORD, TOTP_SECRET, Control, first_company, run


class Recording(httpx.AsyncBaseTransport):
    """The real transport, noting every request the session sends (method, path)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def to(self, path: str, method: str | None = None) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.sent if p.startswith(path) and method in (None, m)]


def _viewer(control: Control) -> str:
    users = control.http.get("/__sandbox/users").raise_for_status().json()
    return str(next(u["email"] for u in users if u["email"].startswith("viewer@")))


def _assert_no_secret(exc: BaseException) -> None:
    for secret in (PASSWORD, TOTP_SECRET):
        assert secret not in str(exc)


@pytest.mark.parametrize("who", ["mfa", "no_mfa"])
def test_a_login_with_pending_terms_raises_and_sends_nothing_that_accepts_them(
    make_session: SessionFactory, control: Control, who: str
) -> None:
    username = CONTROLLER if who == "mfa" else _viewer(control)
    control.mutate(action="publishTerms")
    wire = Recording()
    session = make_session(username, transport=wire)

    async def scenario() -> None:
        with pytest.raises(TermsNotAccepted) as refused:
            await session.ensure_logged_in()
        assert isinstance(refused.value, AuthenticationError)
        assert refused.value.at is not None  # the portal's time, for the next try
        _assert_no_secret(refused.value)
        # Asked again (no login guard here): the kept session is checked, no new sign-in.
        with pytest.raises(TermsNotAccepted):
            await first_company(session)
        assert session.stats.logins == 1
        assert wire.to("/terms") == []  # the terms page is neither read nor posted

        # The person accepts them in their own browser: the same portal session is good now.
        control.mutate(action="acceptTerms", userEmail=username)
        assert await first_company(session)
        assert session.stats.logins == 1
        await session.aclose()

    run(scenario())
    assert wire.to("/terms") == []
    assert len(wire.to("/login", "POST")) == 1


def test_a_signed_in_session_meeting_the_403_raises_it_without_signing_in_again(
    make_session: SessionFactory, control: Control
) -> None:
    reads, writes = Recording(), Recording()
    reader: PortalSession = make_session(transport=reads)
    writer: PortalSession = make_session(transport=writes)

    async def scenario() -> None:
        company = await first_company(reader)
        await writer.ensure_logged_in()
        control.mutate(action="publishTerms")  # published while both are signed in

        with pytest.raises(TermsNotAccepted):
            await reader.list_changes(company, "bills", modified_since=None)
        with pytest.raises(TermsNotAccepted) as refused:
            await writer.approve_bill(company, "00000000-0000-4000-8000-000000000000")
        assert refused.value.nothing_applied  # the portal refused it before applying anything
        for session in (reader, writer):
            assert session.stats.logins == 1 and session.stats.relogins == 0
            _assert_no_secret(refused.value)
        await reader.aclose()
        await writer.aclose()

    run(scenario())
    for wire in (reads, writes):
        assert len(wire.to("/login", "POST")) == 1  # the first sign-in only
        assert wire.to("/terms") == [] and wire.to("/mfa", "POST") == wire.to("/mfa", "POST")[:1]


def test_a_browser_login_landing_on_the_terms_raises_and_leaves_them_unaccepted(
    make_session: SessionFactory, control: Control
) -> None:
    pytest.importorskip("playwright.async_api", reason="playwright (the `browser` extra) is not installed")
    if not Path(os.environ.get("PLOOTO_API_CHROMIUM", "/usr/bin/chromium")).exists():
        pytest.skip("chromium is not installed")
    control.mutate(action="publishTerms")
    session = make_session(login_mode="browser")

    async def scenario() -> None:
        with pytest.raises(TermsNotAccepted) as refused:
            await session.ensure_logged_in()
        _assert_no_secret(refused.value)
        # The browser left the terms page alone: the portal still asks for them...
        with pytest.raises(TermsNotAccepted):
            await first_company(session)
        # ...until the person accepts them; the browser's session is then good as it is.
        control.mutate(action="acceptTerms", userEmail=CONTROLLER)
        assert await first_company(session)
        assert session.stats.logins == 1
        await session.aclose()

    run(scenario())
