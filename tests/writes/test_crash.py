"""The gateway killed (SIGKILL) in the middle of a payment, then restarted: the unfinished operation
is resolved by reading the portal back, and the portal holds exactly one payment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conftest import free_port
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import create_db_engine, session_factory, transaction

from .conftest import CONTROLLER, TOTP_SECRET, base_settings, connect_and_sync

SERVE = "import uvicorn; from plooto_api.api.app import create_app; " \
        "uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning', date_header=False)"  # fmt: skip


def _start(port: int, env: dict[str, str], out: Path) -> subprocess.Popen[str]:
    with out.open("a") as handle:
        proc = subprocess.Popen([sys.executable, "-c", SERVE.format(port=port)], env=env, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # waiting for a child process to listen
    proc.kill()
    raise AssertionError(out.read_text()[-3000:])


@pytest.mark.slow
def test_sigkill_mid_payment_then_restart_pays_once(database_url: str, tmp_path: Path, sandbox: str) -> None:
    settings = base_settings(database_url, tmp_path / "data", sandbox)
    connection_id = asyncio.run(connect_and_sync(settings, CONTROLLER, TOTP_SECRET))
    engine = create_db_engine(database_url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        _row, token = create_token(session, scopes=["*"])
        bill = session.scalars(
            select(models.Bill).where(models.Bill.connection_id == connection_id, models.Bill.status == "approved",
                                      models.Bill.currency == "CAD").order_by(models.Bill.id)
        ).first()  # fmt: skip
        assert bill is not None
    assert settings.vault_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOTO_API_")}
    env.update({
        "PLOOTO_API_DATABASE_URL": database_url, "PLOOTO_API_UPSTREAM_URL": sandbox,
        "PLOOTO_API_DATA_DIR": str(tmp_path / "data"), "PLOOTO_API_VAULT_KEY": settings.vault_key.get_secret_value(),
        "PLOOTO_API_WRITE_WAIT_SECONDS": "30", "PLOOTO_API_WRITE_SETTLE_SECONDS": "4",
        "PLOOTO_API_SYNC_FAST_INTERVAL_SECONDS": "3600", "PLOOTO_API_SYNC_SLOW_INTERVAL_SECONDS": "3600",
    })  # fmt: skip
    control = httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30)
    control.post("/faults", json={"kind": "latency", "latencyMs": 3000, "method": "POST",
                                  "pathPattern": r"/payments$"}).raise_for_status()  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = tmp_path / "gateway.out"
    proc = _start(port, env, out)
    try:
        with pytest.raises(httpx.ReadTimeout):  # the gateway is waiting on the slow portal
            httpx.post(f"{base}/create_payment", json={"bill_id": bill.id},
                       headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "crash-1"}, timeout=1.5)  # fmt: skip
        deadline = time.monotonic() + 10
        while not any(f["hits"] for f in control.get("/faults").json()):
            assert time.monotonic() < deadline
            time.sleep(0.05)  # waiting for the gateway's request to reach the portal
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sessions() as session:
        operation = session.scalars(select(models.Operation)).one()
        assert operation.status == "running" and operation.attempts == 1
    control.delete("/faults").raise_for_status()

    proc = _start(port, env, out)  # startup runs writes.recover
    try:
        deadline = time.monotonic() + 40
        while True:
            body = httpx.get(
                f"{base}/operations/{operation.id}", headers={"Authorization": f"Bearer {token}"}
            ).json()
            if body["status"] not in ("pending", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # waiting for the recovery job in the child process
        assert body["status"] == "succeeded", body
        truth = [p for p in control.get("/ground-truth/payments", params={"bill": bill.upstream_id}).json()
                 if p.get("externalReference") == operation.reference]  # fmt: skip
        assert len(truth) == 1, truth
        replay = httpx.post(f"{base}/create_payment", json={"bill_id": bill.id},
                            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "crash-1"})  # fmt: skip
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == body["result"]["object_id"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        engine.dispose()
        control.close()
