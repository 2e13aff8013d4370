"""One live portal session per connection, built from the vault, shared by every job of a process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.services.connections import (
    VaultSessionStateStore,
    get_connection,
    load_credentials,
    login_blocked_reason,
    waiting_for_terms,
)
from plooto_api.store.models import Connection, VaultEntry
from plooto_api.store.vault import Vault
from plooto_api.upstream import Credentials, MemoryStateStore, PortalSession, SessionStats, ThrottleConfig

# A replaced session is closed once unused this long (its callers have moved to the new one).
RETIRED_IDLE_SECONDS = 300.0


class PortalRegistry:
    """Creates each connection's PortalSession on first use and keeps it for the process's life, or
    until its credentials are replaced (by this process or another: the CLI, another API process)."""

    def __init__(
        self, sessions: sessionmaker[Session], vault: Vault, throttle: ThrottleConfig | None = None
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._throttle = throttle
        self._portals: dict[str, PortalSession] = {}
        self._sealed: dict[str, bytes | None] = {}  # each portal's credentials, by their vault nonce
        self._retired: list[PortalSession] = []  # replaced sessions that callers may still be using
        self._closed = SessionStats()  # the calls of sessions closed since (see totals)
        self._lock = asyncio.Lock()

    async def get(self, connection_id: str) -> PortalSession:
        """The connection's portal session (created, with its saved cookies, if needed)."""
        async with self._lock:
            portal = self._portals.get(connection_id)
            with self._sessions() as session:
                # Every seal draws a new nonce, so a changed nonce means new credentials.
                sealed = session.scalars(
                    select(VaultEntry.nonce).where(
                        VaultEntry.owner_id == connection_id, VaultEntry.purpose == "credentials"
                    )
                ).first()
            await self._close_unused()
            if portal is not None and self._sealed.get(connection_id) != sealed:
                self._retire(self._portals.pop(connection_id))  # its cookies are not the new credentials'
                portal = None
            if portal is None:
                with self._sessions() as session:
                    connection = get_connection(session, connection_id)
                    credentials = load_credentials(session, self._vault, connection)
                    base_url, login_mode = connection.upstream_url, connection.login_mode
                portal = PortalSession(
                    base_url,
                    credentials,
                    VaultSessionStateStore(self._sessions, self._vault, connection_id),
                    throttle=self._throttle,
                    login_mode="browser" if login_mode == "browser" else "http",
                )
                portal.login_guard = partial(self.login_blocked, connection_id, portal)
                self._portals[connection_id] = portal
                self._sealed[connection_id] = sealed
            return portal

    async def login_blocked(
        self, connection_id: str, portal: PortalSession, *, deliberate: bool = False
    ) -> str | None:
        """Why the connection's session must not sign in by itself now, or None: its state (which
        another process may have set; see login_blocked_reason). The login guard of its session.
        `deliberate`: a person asked for this sign-in (see login_blocked_reason)."""
        with self._sessions() as session:
            connection = session.get(Connection, connection_id)
            if connection is None:
                return "the connection was removed"
            session.expunge(connection)  # read as it is now; no transaction stays open below
        ends = connection.state == "locked" and (connection.state_detail or {}).get("until")
        retries = waiting_for_terms(connection) and not deliberate
        # A lock ends, and new terms are tried again, by the portal's clock, read now: it may have
        # moved since we last heard it, and a session not yet restored knows only this machine's.
        return login_blocked_reason(
            connection,
            await portal.read_portal_clock() if ends or retries else portal.portal_now(),
            deliberate=deliberate,
        )

    @asynccontextmanager
    async def probe(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        login_mode: str,
        device_from: dict[str, Any] | None = None,
    ) -> AsyncIterator[tuple[PortalSession, MemoryStateStore]]:
        """A portal session of its own for credentials not stored yet (a person giving new ones for
        a working connection): nothing of it is saved, and the connection's session is untouched,
        until the caller keeps its state (`MemoryStateStore.state`) once the portal took them.
        `device_from`: a saved state whose trusted device it signs in as (only for a caller the
        connection is entrusted to: a device must not vouch for whoever knows a password)."""
        store = MemoryStateStore()
        portal = PortalSession(base_url, credentials, store, throttle=self._throttle,
                               login_mode="browser" if login_mode == "browser" else "http")  # fmt: skip
        if device_from is not None:
            portal.adopt_trusted_device(device_from)
        try:
            yield portal, store
        finally:
            self._count_closed(portal)
            await portal.aclose(persist=False)

    async def forget(self, connection_id: str) -> None:
        """Drop a connection's session (after its credentials change): the next `get` builds a new
        one. It saves nothing more (the saved state is the new credentials' to build, or to put
        back), and callers still holding it finish with it (see PortalSession.retire)."""
        async with self._lock:
            portal = self._portals.pop(connection_id, None)
            if portal is not None:
                self._retire(portal)
            await self._close_unused()

    def _retire(self, portal: PortalSession) -> None:
        portal.retire()
        self._retired.append(portal)

    async def _close_unused(self) -> None:
        """Close the HTTP clients of retired sessions no request used for RETIRED_IDLE_SECONDS (a
        write's read-backs come at most seconds apart)."""
        idle = time.monotonic() - RETIRED_IDLE_SECONDS
        unused = [portal for portal in self._retired if portal.last_used < idle]
        self._retired = [portal for portal in self._retired if portal.last_used >= idle]
        for portal in unused:
            self._count_closed(portal)
            await portal.aclose(persist=False)

    def _count_closed(self, portal: PortalSession) -> None:
        _add(self._closed, portal.stats)

    def totals(self) -> SessionStats:
        """The portal calls this process made (requests, 429s, retries, sign-ins), every session's."""
        total = SessionStats()
        for stats in [self._closed, *(p.stats for p in [*self._portals.values(), *self._retired])]:
            _add(total, stats)
        return total

    async def aclose(self) -> None:
        """Close every session's HTTP client."""
        async with self._lock:
            portals, self._portals = list(self._portals.values()), {}
            retired, self._retired = self._retired, []
        for portal in portals:
            self._count_closed(portal)
            await portal.aclose()
        for portal in retired:
            self._count_closed(portal)
            await portal.aclose(persist=False)


def _add(total: SessionStats, more: SessionStats) -> None:
    for field in fields(SessionStats):
        setattr(total, field.name, getattr(total, field.name) + getattr(more, field.name))
