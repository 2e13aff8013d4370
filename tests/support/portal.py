"""Doing to the sandbox what someone else would do to the portal."""

from __future__ import annotations

import httpx
import pytest

from plooto_api.upstream import (
    AccountLocked,
    Credentials,
    InvalidCredentials,
    MemoryStateStore,
    PortalSession,
)


async def lock_login_from_elsewhere(sandbox: str, control: httpx.Client, username: str) -> None:
    """Five bad passwords from somewhere else lock the login (15 minutes of the portal's clock), and
    the portal drops its sessions: the gateway's next request has to sign in again. `control` is a
    client of the sandbox's control API (`<sandbox>/__sandbox`)."""
    other = PortalSession(sandbox, Credentials(username, "wrong-password", None), MemoryStateStore())
    try:
        for _ in range(5):
            with pytest.raises((InvalidCredentials, AccountLocked)):
                await other.ensure_logged_in()
    finally:
        await other.aclose()
    control.post("/sessions/revoke", json={"email": username}).raise_for_status()
