"""A trusted-device cookie earned by another process of the same connection (an SMS code given with
`plooto-api sync --mfa-code` while `plooto-api serve` runs) is neither saved over nor left unused by
the session that restored the state before it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from plooto_api.upstream import MemoryStateStore, MfaRequired
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import CLERK, Control, run

DEVICE = ".Plooto.TrustedDevice"


def _devices(store: MemoryStateStore) -> list[str]:
    assert store.state is not None
    return [c["value"] for c in store.state["cookies"] if c["name"] == DEVICE]


def _sms_count(control: Control) -> int:
    return len(control.outbox(kind="Sms"))


def test_a_device_trusted_by_another_process_is_kept_and_used_for_the_next_sign_in(
    make_session: SessionFactory, control: Control
) -> None:
    store = MemoryStateStore()  # the connection's saved state, shared by both processes
    gateway = make_session(CLERK, store=store)  # `serve`: waits for the SMS code

    async def scenario() -> None:
        with pytest.raises(MfaRequired):
            await gateway.ensure_logged_in()
        # The CLI, given the code, finishes the pending sign-in and earns the trusted device.
        cli = make_session(CLERK, store=store)
        await cli.submit_mfa_code(control.outbox(kind="Sms")[-1]["code"])
        await cli.aclose()
        earned = _devices(store)
        assert len(earned) == 1
        # The gateway finds its pending session signed in, and saves its state: it used to save its
        # jar, without the device, over the CLI's.
        await gateway.ensure_logged_in()
        assert _devices(store) == earned
        # The portal drops the session: the gateway signs in again with the device, no code asked.
        sent = _sms_count(control)
        control.revoke(CLERK)
        assert await gateway.list_companies()
        assert (gateway.stats.relogins, gateway.stats.logins, gateway.stats.mfa_answers) == (1, 2, 0)
        assert _sms_count(control) == sent
        await gateway.aclose()
        assert _devices(store) == earned

    run(scenario())

    # And a restart signs in with it as well.
    control.revoke(CLERK)
    restarted = make_session(CLERK, store=store)

    async def restart() -> None:
        await restarted.ensure_logged_in()
        await restarted.aclose()

    run(restart())
    assert restarted.stats.logins == 1 and restarted.stats.mfa_answers == 0


def test_a_sign_in_takes_the_device_another_process_saved_since(
    make_session: SessionFactory, control: Control
) -> None:
    # The gateway signed in without trusting the device; the CLI later signed in with a code and
    # trusted it. The gateway saves nothing meanwhile, so only its sign-in can find the device.
    store = MemoryStateStore()
    gateway = make_session(CLERK, store=store)

    async def scenario() -> None:
        with pytest.raises(MfaRequired):
            await gateway.ensure_logged_in()
        await gateway.submit_mfa_code(control.outbox(kind="Sms")[-1]["code"], trust_device=False)
        assert _devices(store) == []
        control.revoke(CLERK)
        cli = make_session(CLERK, store=store)
        with pytest.raises(MfaRequired):
            await cli.ensure_logged_in(deliberate=True)
        await cli.submit_mfa_code(control.outbox(kind="Sms")[-1]["code"])
        await cli.aclose()
        assert len(_devices(store)) == 1
        sent = _sms_count(control)
        assert await gateway.list_companies()  # its session was revoked: it signs in again
        assert gateway.stats.relogins == 1 and _sms_count(control) == sent
        await gateway.aclose()

    run(scenario())


def _cookie(value: str, days: float) -> dict[str, Any]:
    return {"name": DEVICE, "value": value, "domain": "127.0.0.1", "path": "/",
            "expires": int(time.time() + days * 86400), "secure": False}  # fmt: skip


def test_an_older_device_never_replaces_a_newer_one_saved_by_another_process(
    make_session: SessionFactory,
) -> None:
    store = MemoryStateStore()
    first, second = make_session(CLERK, store=store), make_session(CLERK, store=store)

    async def scenario() -> None:
        first.import_cookies([_cookie("older", 29)])
        second.import_cookies([_cookie("newer", 30)])  # issued later: expires later
        assert _devices(store) == ["newer"]
        # The first saves again (a cookie of its own changed): it keeps the newer device and uses it.
        first.import_cookies([{**_cookie("ignored", 1), "name": "XSRF-TOKEN", "value": "x"}])
        assert _devices(store) == ["newer"]
        assert [c["value"] for c in first.export_cookies() if c["name"] == DEVICE] == ["newer"]
        # A device it earns later than that one is saved, as before.
        first.import_cookies([_cookie("newest", 31)])
        assert _devices(store) == ["newest"]
        for session in (first, second):
            await session.aclose(persist=False)

    run(scenario())
