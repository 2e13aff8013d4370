"""Fixtures for write tests: a gateway (TestClient) on a synced connection to the real sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine, SyncReport

CONTROLLER = "controller@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
FAST = {"write_wait_seconds": 3.0, "write_timeout_seconds": 10.0, "write_settle_seconds": 3.0}


def base_settings(database_url: str, data_dir: Path, sandbox: str, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, upstream_url=sandbox,
                    vault_key=SecretStr(generate_key()), **{**FAST, **overrides})  # fmt: skip


async def connect_and_sync(settings: Settings, username: str, totp: str | None) -> str:
    ctx = JobContext.from_settings(settings, migrate=False)
    try:
        with transaction(ctx.sessions) as session:
            connection_id = create_connection(
                session, ctx.vault, username=username, password=PASSWORD,
                upstream_url=str(settings.upstream_url), totp_secret=totp,
            ).id  # fmt: skip
        report = await SyncEngine(ctx).sync_connection(connection_id)
        assert report.ok, report.error
        return connection_id
    finally:
        await ctx.aclose()


@dataclass
class Gateway:
    """A running gateway app, its admin token and the sandbox behind it."""

    client: TestClient
    token: str
    sandbox: str
    settings: Settings
    connection_id: str
    control: httpx.Client = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: Any = None, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.client.post(path, json=body, headers=headers, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path, headers=self.headers)

    def sessions(self) -> Any:
        return self.client.app.state.sessions  # type: ignore[attr-defined]

    def bill(self, **where: Any) -> models.Bill:
        """A bill of the store matching `where`, by a vendor whose payments are not returned."""
        with self.sessions()() as session:
            stmt = select(models.Bill).where(models.Bill.connection_id == self.connection_id)
            for column, value in where.items():
                stmt = stmt.where(getattr(models.Bill, column) == value)
            for bill in session.scalars(stmt.order_by(models.Bill.id)):
                vendor = session.get(models.Vendor, bill.vendor_id) if bill.vendor_id else None
                if vendor is not None and "Stale" not in vendor.name:
                    return bill
        raise AssertionError(f"no bill with {where}")

    def sync(self) -> SyncReport:
        """Sync the connection now, as a worker beside the app would."""

        async def run() -> SyncReport:
            ctx = JobContext.from_settings(self.settings, migrate=False)
            try:
                return await SyncEngine(ctx).sync_connection(self.connection_id)
            finally:
                await ctx.aclose()

        return asyncio.run(run())

    def ground_truth(self, bill_upstream_id: str) -> list[dict[str, Any]]:
        """Every payment the portal holds for the bill that the gateway made (seeded ones aside)."""
        response = self.control.get("/ground-truth/payments", params={"bill": bill_upstream_id})
        response.raise_for_status()
        return [p for p in response.json() if (p.get("externalReference") or "").startswith("papi-")]

    def fault(self, **spec: Any) -> None:
        self.control.post("/faults", json=spec).raise_for_status()

    def wait_synced_after(self, stamp: str | None, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the connection until a sync newer than `stamp` finished (the app's jobs run it)."""

        def synced(body: dict[str, Any]) -> bool:
            return body["last_synced_at"] != stamp and body["state"] != "syncing"

        body = self._poll(f"/connections/{self.connection_id}", timeout, synced)
        if not synced(body):
            raise AssertionError(f"no sync after {stamp} within {timeout} s: {body}")
        return body

    def wait_operation(self, operation_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the operation until it is final (the job runs on the app's loop)."""
        return self._poll(f"/operations/{operation_id}", timeout,
                          lambda b: b["status"] in ("succeeded", "failed", "requires_action"))  # fmt: skip

    def _poll(self, path: str, timeout: float, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """GET `path` until `done` holds or `timeout` passes; the last body either way."""
        deadline = time.monotonic() + timeout
        while True:
            body = dict(self.get(path).json())
            if done(body) or time.monotonic() > deadline:
                return body
            time.sleep(0.1)  # waiting for the background job, not driving it


@pytest.fixture
def make_gateway(database_url: str, tmp_path: Path, sandbox: str) -> Iterator[Callable[..., Gateway]]:
    opened: list[tuple[TestClient, httpx.Client]] = []

    def make(username: str = CONTROLLER, totp: str | None = TOTP_SECRET, run_jobs: bool = False,
             **overrides: Any) -> Gateway:  # fmt: skip
        settings = base_settings(database_url, tmp_path / f"d{len(opened)}", sandbox, **overrides)
        connection_id = asyncio.run(connect_and_sync(settings, username, totp))
        client = TestClient(create_app(settings, run_jobs=run_jobs))
        client.__enter__()
        with transaction(client.app.state.sessions) as session:  # type: ignore[attr-defined]
            _row, secret = create_token(session, scopes=["*"], name="writes-test")
        control = httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30)
        opened.append((client, control))
        return Gateway(client, secret, sandbox, settings, connection_id, control)

    yield make
    for client, control in opened:
        client.__exit__(None, None, None)
        control.close()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()


def left_open(gw: Gateway, operation_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The operation once its execution has left it open with a time to try it again."""
    from plooto_api.services import writes

    deadline = time.monotonic() + timeout
    while True:
        body = dict(gw.get(f"/operations/{operation_id}").json())
        if (body.get("error") or {}).get("retry_at") and operation_id not in writes._IN_HAND:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)  # waiting for the background job, not driving it
