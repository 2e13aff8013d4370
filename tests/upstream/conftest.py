"""Fixtures for the portal adapter: a control client for the sandbox and sessions on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from plooto_api.upstream import Credentials, MemoryStateStore, PortalSession, ThrottleConfig
from upstream.upstream_helpers import CONTROLLER, PASSWORD, TOTP_SECRET, Control


@pytest.fixture
def portal_url(request: pytest.FixtureRequest) -> str:
    """The sandbox reset to the suite's seed: the suite's own process (`sandbox`), or an already
    running one named by PLOOTO_UPSTREAM_TEST_SANDBOX_URL (handy while the sandbox is being edited)."""
    import os

    existing = os.environ.get("PLOOTO_UPSTREAM_TEST_SANDBOX_URL")
    if not existing:
        return str(request.getfixturevalue("sandbox"))
    import httpx

    from conftest import SANDBOX_SEED

    with httpx.Client(base_url=existing, timeout=60) as client:
        client.delete("/__sandbox/faults").raise_for_status()
        client.post("/__sandbox/reset", json=SANDBOX_SEED).raise_for_status()
    return existing


@pytest.fixture
def control(portal_url: str) -> Iterator[Control]:
    ctl = Control(portal_url)
    yield ctl
    from conftest import SANDBOX_RATE

    ctl.rate_limit(SANDBOX_RATE["limit"], SANDBOX_RATE["burst"])  # the suite's, in case a test lowered it
    ctl.http.close()


SessionFactory = Callable[..., PortalSession]


@pytest.fixture
def make_session(control: Control) -> SessionFactory:
    """Build a PortalSession on the sandbox; the portal clock is read from the sandbox (TOTP)."""

    def factory(
        username: str = CONTROLLER,
        *,
        store: MemoryStateStore | None = None,
        password: str = PASSWORD,
        totp: bool = True,
        throttle: ThrottleConfig | None = None,
        **kwargs: Any,
    ) -> PortalSession:
        secret = TOTP_SECRET if totp and username == CONTROLLER else None
        return PortalSession(
            control.base_url,
            Credentials(username, password, secret),
            store if store is not None else MemoryStateStore(),
            throttle=throttle or ThrottleConfig(initial_rate=40.0, max_rate=100.0),
            portal_clock=control.now,
            **kwargs,
        )

    return factory
