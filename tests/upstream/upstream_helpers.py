"""Helpers for the portal adapter tests: the sandbox control API, constants, running coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

import httpx

from plooto_api.upstream import PortalSession

T = TypeVar("T")

PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
CONTROLLER = "controller@northwind-cpa.test"  # TOTP
CLERK = "clerk@northwind-cpa.test"  # SMS


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Control:
    """The sandbox's control API (/__sandbox/…), used only by tests."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def now(self) -> datetime:
        body = self.http.get("/__sandbox/clock").raise_for_status().json()
        return datetime.fromisoformat(body["now"].replace("Z", "+00:00"))

    def advance(self, **step: float) -> None:
        self.http.post("/__sandbox/clock", json=step).raise_for_status()

    def fault(self, **spec: Any) -> str:
        return str(self.http.post("/__sandbox/faults", json=spec).raise_for_status().json()["faultId"])

    def faults(self) -> list[dict[str, Any]]:
        body = self.http.get("/__sandbox/faults").raise_for_status().json()
        return list(body["faults"] if isinstance(body, dict) else body)

    def clear_faults(self) -> None:
        self.http.delete("/__sandbox/faults").raise_for_status()

    def outbox(self, **query: str) -> list[dict[str, Any]]:
        return list(self.http.get("/__sandbox/outbox", params=query).raise_for_status().json())

    def mutate(self, **body: Any) -> list[str]:
        return list(self.http.post("/__sandbox/mutate", json=body).raise_for_status().json()["changed"])

    def rate_limit(self, rate: float, burst: int) -> None:
        self.http.put(
            "/__sandbox/rate-limit", json={"ratePerSecond": rate, "burst": burst}
        ).raise_for_status()

    def revoke(self, email: str | None = None) -> None:
        self.http.post(
            "/__sandbox/sessions/revoke", json={"email": email} if email else {}
        ).raise_for_status()


async def first_company(session: PortalSession) -> str:
    companies = await session.list_companies()
    return companies[0].upstream_id
