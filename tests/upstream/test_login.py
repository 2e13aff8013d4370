"""Signing in over HTTP: TOTP, SMS answered later, trusted device across restarts, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from plooto_api.upstream import (
    Credentials,
    InvalidCredentials,
    InvalidMfaCode,
    MemoryStateStore,
    MfaChallenge,
    MfaRequired,
)
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import CLERK, CONTROLLER, PASSWORD, TOTP_SECRET, Control, first_company, run


def test_totp_login_answers_mfa_itself_and_persists_state(make_session: SessionFactory) -> None:
    store = MemoryStateStore()
    session = make_session(store=store)

    async def scenario() -> None:
        await session.ensure_logged_in()
        assert await first_company(session)
        await session.keep_alive()
        await session.aclose()

    run(scenario())
    assert session.stats.logins == 1
    assert session.stats.mfa_answers == 1
    assert store.state is not None
    names = {c["name"] for c in store.state["cookies"]}
    assert {".Plooto.Session", "XSRF-TOKEN", ".Plooto.TrustedDevice"} <= names
    assert store.state["pending_mfa"] is None


def test_restart_reuses_session_then_trusted_device_without_mfa(
    make_session: SessionFactory, control: Control
) -> None:
    store = MemoryStateStore()
    run(_login_and_close(make_session(store=store)))

    # Restart: the saved session cookie is still alive, so no sign-in at all.
    restarted = make_session(store=store)
    run(_login_and_close(restarted))
    assert restarted.stats.logins == 0 and restarted.stats.mfa_answers == 0

    # The portal drops every session: the trusted-device cookie skips MFA on the new sign-in.
    control.revoke()
    again = make_session(store=store, totp=False)  # no TOTP secret: MFA would be impossible
    run(_login_and_close(again))
    assert again.stats.logins == 1 and again.stats.mfa_answers == 0


async def _login_and_close(session: object) -> None:
    from plooto_api.upstream import PortalSession

    assert isinstance(session, PortalSession)
    await session.ensure_logged_in()
    await session.list_companies()
    await session.aclose()


def test_sms_login_waits_for_the_code_even_across_a_restart(
    make_session: SessionFactory, control: Control
) -> None:
    store = MemoryStateStore()
    session = make_session(CLERK, store=store)

    async def first_run() -> MfaRequired:
        try:
            with pytest.raises(MfaRequired) as caught:
                await session.ensure_logged_in()
            return caught.value
        finally:
            await session.aclose()

    assert run(first_run()).challenge == MfaChallenge("sms")
    assert store.state is not None and store.state["pending_mfa"] == {"method": "sms", "detail": None}

    code = control.outbox(kind="Sms")[-1]["code"]
    restarted = make_session(CLERK, store=store)
    assert restarted.pending_mfa is None  # state is read lazily

    async def second_run() -> None:
        await restarted.submit_mfa_code(code)
        await _login_and_close(restarted)

    run(second_run())
    assert restarted.stats.logins == 0
    assert store.state["pending_mfa"] is None
    assert ".Plooto.TrustedDevice" in {c["name"] for c in store.state["cookies"]}


def test_wrong_sms_code_raises_invalid_mfa_code(make_session: SessionFactory) -> None:
    session = make_session(CLERK)

    async def scenario() -> None:
        with pytest.raises(MfaRequired):
            await session.ensure_logged_in()
        with pytest.raises(InvalidMfaCode):
            await session.submit_mfa_code("000000")
        await session.aclose()

    run(scenario())


def test_invalid_password_is_raised_after_a_single_attempt(
    make_session: SessionFactory, control: Control
) -> None:
    control.fault(kind="latency", latencyMs=0, method="POST", pathPattern="^/login$")
    session = make_session(password="wrong-password")

    async def scenario() -> None:
        with pytest.raises(InvalidCredentials):
            await session.ensure_logged_in()
        (fault,) = control.faults()
        assert fault["hits"] == 1
        assert session.stats.logins == 1
        # A second call tries again (the caller decided to), but still once per call.
        with pytest.raises(InvalidCredentials):
            await session.ensure_logged_in()
        assert control.faults()[0]["hits"] == 2
        await session.aclose()

    run(scenario())


def test_secrets_never_show_in_reprs_or_errors(make_session: SessionFactory) -> None:
    credentials = Credentials(CONTROLLER, PASSWORD, TOTP_SECRET)
    assert PASSWORD not in repr(credentials) and TOTP_SECRET not in repr(credentials)
    assert PASSWORD not in str(credentials)
    session = make_session(password="wrong-password")
    assert "wrong-password" not in repr(session)
    with pytest.raises(InvalidCredentials) as caught:
        run(session.ensure_logged_in())
    assert "wrong-password" not in str(caught.value)


def test_repeated_bad_passwords_end_in_account_locked(make_session: SessionFactory) -> None:
    from plooto_api.upstream import AccountLocked

    session = make_session(password="wrong-password")

    async def scenario() -> list[str]:
        outcomes = []
        for _ in range(5):
            try:
                await session.ensure_logged_in()
            except (InvalidCredentials, AccountLocked) as exc:
                outcomes.append(type(exc).__name__)
        await session.aclose()
        return outcomes

    assert run(scenario()) == ["InvalidCredentials"] * 4 + ["AccountLocked"]
    assert session.stats.logins == 5


def test_concurrent_callers_share_one_sign_in(make_session: SessionFactory) -> None:
    import asyncio

    session = make_session()

    async def scenario() -> None:
        companies = await asyncio.gather(*(session.list_companies() for _ in range(6)))
        assert all(len(c) == 2 for c in companies)
        await session.aclose()

    run(scenario())
    assert session.stats.logins == 1 and session.stats.mfa_answers == 1


def test_portal_clock_learned_from_the_session_answers_a_later_totp_challenge(
    make_session: SessionFactory, control: Control
) -> None:
    from plooto_api.upstream import PortalSession

    store = MemoryStateStore()
    run(_login_and_close(make_session(store=store)))
    assert store.state is not None and store.state["clock_offset"] is not None
    # No portal_clock hook: the offset learned from /api/session (persisted) gives the portal's time.
    restarted = PortalSession(control.base_url, Credentials(CONTROLLER, PASSWORD, TOTP_SECRET), store)

    async def scenario() -> None:
        await restarted.ensure_logged_in()
        control.fault(kind="mfa_rechallenge", pathPattern="/api/companies$", count=1)
        await restarted.list_companies()
        await restarted.aclose()

    run(scenario())
    assert restarted.stats.mfa_answers == 1 and restarted.stats.logins == 0


def test_a_session_closed_without_saving_never_writes_its_state_again(make_session: SessionFactory) -> None:
    store = MemoryStateStore()
    session = make_session(store=store)

    async def scenario() -> None:
        await session.ensure_logged_in()
        assert store.state is not None and store.state["cookies"]
        store.state = None  # its credentials were replaced: the saved session was set aside
        await session.aclose(persist=False)
        session.save_state()  # e.g. a sync that was still running on it, ending
        session._persist(force=True)  # or one of its responses arriving

    run(scenario())
    assert store.state is None


def test_callers_waiting_for_a_refused_sign_in_share_its_refusal(
    make_session: SessionFactory, control: Control
) -> None:
    # The password was changed (or replaced by a wrong one) while the session still worked; then the
    # session was lost mid-sync. Each company's request waited for the sign-in and, once it was
    # refused, tried again with the same password: one run of 7 companies locked the account.
    import asyncio

    from plooto_api.upstream import MemoryStateStore

    store = MemoryStateStore()
    good = make_session(store=store)
    stale = make_session(store=store, password="wrong-password")  # the saved session, a refused password

    async def scenario() -> list[Any]:
        await good.ensure_logged_in()
        await good.aclose()
        await stale.list_companies()  # the saved session works
        control.revoke()
        control.fault(kind="latency", latencyMs=0, method="POST", pathPattern="^/login$")
        outcomes = await asyncio.gather(*(stale.list_companies() for _ in range(6)), return_exceptions=True)
        assert control.faults()[0]["hits"] == 1 and stale.stats.logins == 1
        with pytest.raises(InvalidCredentials):  # a later call, not one that waited, tries again
            await stale.ensure_logged_in()
        assert control.faults()[0]["hits"] == 2
        await stale.aclose()
        return outcomes

    outcomes = run(scenario())
    assert all(isinstance(o, InvalidCredentials) for o in outcomes), outcomes
