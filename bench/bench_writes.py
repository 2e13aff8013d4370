"""Exactly-once benchmark: payments under randomized portal faults; prints duplicates and losses.

Starts a real sandbox, syncs a connection into a fresh SQLite store, then runs `--trials` payments
through `POST /create_payment` (the gateway app in this process), each under a fault drawn at random:
none, a response dropped after the payment is applied (connection aborted, or a proxy's 502), a 5xx
without applying, latency beyond the short wait (202 then succeeded), latency beyond the portal
timeout (read back, settle, resend), a revoked session, or a dropped response plus failing read-backs.
Every trial is checked against the sandbox's ground truth: a duplicate is more than one portal
payment with the trial's reference; a loss is a trial without exactly one (or an operation that did
not succeed). Prints one figure per line, `name value unit`.

    .venv/bin/python bench/bench_writes.py [--trials 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.log import configure_logging
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine

POST_PAYMENTS = {"method": "POST", "pathPattern": r"/payments$", "count": 1}
FAULTS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "drop_abort": [{"kind": "drop_response", "mode": "abort", **POST_PAYMENTS}],
    "drop_502": [{"kind": "drop_response", "mode": "502", **POST_PAYMENTS}],
    "error_500": [{"kind": "error", "status": 500, **POST_PAYMENTS}],
    "error_503": [{"kind": "error", "status": 503, **POST_PAYMENTS}],
    "latency_202": [{"kind": "latency", "latencyMs": 700, **POST_PAYMENTS}],
    "latency_timeout": [{"kind": "latency", "latencyMs": 1000, **POST_PAYMENTS}],
    "revoke_session": [{"kind": "revoke_session", **POST_PAYMENTS}],
    "drop_then_failing_readback": [
        {"kind": "drop_response", "mode": "abort", **POST_PAYMENTS},
        {"kind": "error", "status": 503, "method": "GET", "pathPattern": r"/payments$", "count": 2},
    ],
}
SETTINGS: dict[str, Any] = {
    "write_wait_seconds": 0.5,
    "write_timeout_seconds": 0.6,
    "write_settle_seconds": 1.5,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_sandbox(port: int, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plooto_sandbox", "--port", str(port), "--seed", "11", "--companies", "1",
             "--bills-per-company", "60", "--rate-limit", "1000", "--rate-burst", "2000"],
            stdout=handle, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "plooto-sandbox listening on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sandbox did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


async def _connect(settings: Settings) -> str:
    ctx = JobContext.from_settings(settings)
    try:
        with transaction(ctx.sessions) as session:
            connection_id = create_connection(
                session, ctx.vault, username="controller@northwind-cpa.test", password="sandbox-password",
                upstream_url=str(settings.upstream_url), totp_secret="PLOOTOSANDBOXTOTPSECRETKEY234567",
            ).id  # fmt: skip
        report = await SyncEngine(ctx).sync_connection(connection_id)
        if not report.ok:
            raise SystemExit(f"initial sync failed: {report.error}")
        return connection_id
    finally:
        await ctx.aclose()


def run(trials: int, seed: int) -> dict[str, Any]:
    """Run the trials; returns the figures."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-writes-") as tmp:
        port = _free_port()
        sandbox = f"http://127.0.0.1:{port}"
        proc = _start_sandbox(port, Path(tmp) / "sandbox.log")
        try:
            settings = Settings(data_dir=Path(tmp) / "data", database_url=f"sqlite:///{tmp}/store.db",
                                upstream_url=sandbox, vault_key=SecretStr(generate_key()), **SETTINGS)  # fmt: skip
            connection_id = asyncio.run(_connect(settings))
            control = httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30)
            with TestClient(create_app(settings, run_jobs=False)) as client:
                sessions = client.app.state.sessions  # type: ignore[attr-defined]
                with transaction(sessions) as session:
                    _row, token = create_token(session, scopes=["payments:write", "payments:read"])
                    bills = [
                        (b.id, b.upstream_id)
                        for b in session.scalars(
                            select(models.Bill).where(
                                models.Bill.connection_id == connection_id, models.Bill.status == "approved",
                                models.Bill.currency == "CAD", models.Bill.amount_due_minor >= 100_000,
                            )
                        )
                    ]  # fmt: skip
                headers = {"Authorization": f"Bearer {token}"}
                return _trials(client, control, headers, bills, trials, rng)
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def _trials(client: TestClient, control: httpx.Client, headers: dict[str, str], bills: list[tuple[str, str]],
            trials: int, rng: random.Random) -> dict[str, Any]:  # fmt: skip
    duplicates = lost = 0
    latencies: list[float] = []
    by_fault: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for trial in range(trials):
        fault = rng.choice(sorted(FAULTS))
        by_fault[fault] += 1
        bill_id, bill_upstream = rng.choice(bills)
        control.delete("/faults").raise_for_status()
        for spec in FAULTS[fault]:
            control.post("/faults", json=spec).raise_for_status()
        started = time.perf_counter()
        response = client.post("/create_payment", json={"bill_id": bill_id, "amount": "1.00"},
                               headers={**headers, "Idempotency-Key": f"bench-{trial}"})  # fmt: skip
        statuses[response.status_code] += 1
        operation_id = response.headers.get("Operation-Id")
        operation: dict[str, Any] = {"status": "missing"}
        deadline = time.monotonic() + 30
        while operation_id and time.monotonic() < deadline:
            operation = client.get(f"/operations/{operation_id}", headers=headers).json()
            if operation["status"] not in ("pending", "running"):
                break
            time.sleep(0.02)  # polling the operation the background job is finishing
        latencies.append(time.perf_counter() - started)
        mine = [
            p for p in control.get("/ground-truth/payments", params={"bill": bill_upstream}).json()
            if operation_id and p.get("externalReference") == operation.get("reference")
        ]  # fmt: skip
        if len(mine) > 1:
            duplicates += 1
            print(f"# duplicate: trial {trial} fault {fault} operation {operation_id}", file=sys.stderr)
        if operation.get("status") != "succeeded" or len(mine) == 0:
            lost += 1
            print(
                f"# lost: trial {trial} fault {fault} status {response.status_code} {operation}",
                file=sys.stderr,
            )
    control.delete("/faults")
    return {
        "trials": trials,
        "duplicates": duplicates,
        "lost": lost,
        "p50": statistics.median(latencies) * 1000,
        "p95": statistics.quantiles(latencies, n=20)[-1] * 1000
        if len(latencies) >= 2
        else latencies[0] * 1000,
        "accepted_202": statuses[202],
        "faults": by_fault,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="error", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    configure_logging(args.log_level)  # stderr; stdout carries only the figures
    figures = run(args.trials, args.seed)
    print(f"trials {figures['trials']} count")
    print(f"duplicates {figures['duplicates']} count")
    print(f"lost {figures['lost']} count")
    print(f"write_latency_p50 {figures['p50']:.1f} ms")
    print(f"write_latency_p95 {figures['p95']:.1f} ms")
    print(f"answered_202 {figures['accepted_202']} count")
    for fault, count in sorted(figures["faults"].items()):
        print(f"trials_{fault} {count} count")


if __name__ == "__main__":
    main()
