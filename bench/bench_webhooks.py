"""Webhook benchmark: latency from a change in the sandbox to the signed webhook's arrival, with the
near-real-time sync schedule running in-process, and raw delivery throughput.

Starts plooto-sandbox, connects to it, runs the gateway's in-process jobs (fast sync every
`--sync-interval` s, the delivery worker every `--delivery-interval` s) and a receiver on loopback
that verifies every signature with `standardwebhooks`. Each sample edits one bill in the portal
(`modifyBills`) and times until its `bill.updated` webhook arrives. Then `--deliveries` events are
recorded at once and delivered by one worker. Prints `name value unit`; bounded to < 3 minutes.

    .venv/bin/python bench/bench_webhooks.py [--samples 20] [--sync-interval 2] [--deliveries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import func, select
from standardwebhooks import Webhook

from plooto_api.config import Settings
from plooto_api.jobs import InProcessEngine, JobContext
from plooto_api.jobs.schedules import schedule_all
from plooto_api.services.connections import create_connection
from plooto_api.services.events import record_event
from plooto_api.services.tokens import Principal
from plooto_api.services.webhooks import create_endpoint
from plooto_api.store import models
from plooto_api.store.database import transaction
from plooto_api.store.scope import AccessScope
from plooto_api.store.vault import generate_key
from plooto_api.sync.engine import SyncEngine
from plooto_api.webhooks import DeliveryWorker
from plooto_api.webhooks.schemas import WebhookEndpointCreate

CONTROLLER = "controller@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
DEADLINE_SECONDS = 170


class Arrivals:
    """What the receiver got: arrival time by (event type, upstream id), and a count."""

    def __init__(self) -> None:
        self.secret = ""
        self.lock = threading.Lock()
        self.by_key: dict[tuple[str, str], float] = {}
        self.count = 0
        self.bad = 0


def start_receiver(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            now = time.monotonic()
            try:
                payload = Webhook(arrivals.secret).verify(body, dict(self.headers.items()))
                status = 200
            except Exception:
                payload, status = None, 400
            with arrivals.lock:
                if payload is None:
                    arrivals.bad += 1
                else:
                    arrivals.count += 1
                    key = (payload["type"], str(payload["data"].get("upstream_id")))
                    arrivals.by_key.setdefault(key, now)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default backlog (5) resets concurrent connections
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sandbox(log_path: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "plooto_sandbox", "--port", str(port), "--seed", "7", "--companies", "2",
         "--bills-per-company", "30"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while "plooto-sandbox listening on" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sandbox did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    sandbox, sandbox_url = start_sandbox(tmp / "sandbox.log")
    arrivals = Arrivals()
    receiver = start_receiver(arrivals)
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    settings = Settings(
        data_dir=tmp / "data", upstream_url=sandbox_url, vault_key=SecretStr(generate_key()),
        webhook_allow_private=True, sync_fast_interval_seconds=args.sync_interval,
        webhook_delivery_interval_seconds=args.delivery_interval, log_level="warning",
    )  # fmt: skip
    ctx = JobContext.from_settings(settings)
    engine = InProcessEngine(ctx)
    control = httpx.Client(base_url=f"{sandbox_url}/__sandbox", timeout=30)
    admin = Principal(token_id="bench", scopes=frozenset({"*"}), access=AccessScope())
    try:
        with transaction(ctx.sessions) as session:
            connection_id = create_connection(session, ctx.vault, username=CONTROLLER, password=PASSWORD,
                                              upstream_url=sandbox_url, totp_secret=TOTP_SECRET).id  # fmt: skip
        assert (await SyncEngine(ctx).sync_connection(connection_id)).ok
        with transaction(ctx.sessions) as session:
            endpoint = create_endpoint(
                session, ctx.vault, admin, WebhookEndpointCreate(url=url), allow_private=True
            )
        arrivals.secret = endpoint.secret
        with ctx.sessions() as session:
            company = session.scalars(select(models.Company).order_by(models.Company.name)).first()
            assert company is not None

        # 1. Change in the portal → webhook arrival, with the periodic jobs as `serve` runs them.
        schedule_all(engine, ctx)
        latencies: list[float] = []
        for _ in range(args.samples):
            if time.monotonic() - started > DEADLINE_SECONDS * 0.6:
                break
            t0 = time.monotonic()
            changed = control.post("/mutate", json={"action": "modifyBills", "companyId": company.upstream_id,
                                                    "count": 1}).json()["changed"]  # fmt: skip
            key = ("bill.updated", changed[0])
            deadline = t0 + 30
            while time.monotonic() < deadline:
                with arrivals.lock:
                    arrived = arrivals.by_key.pop(key, None)
                if arrived is not None:
                    latencies.append(arrived - t0)
                    break
                await asyncio.sleep(0.01)
        await engine.stop()

        # 2. Throughput: many events at once, one worker.
        with transaction(ctx.sessions) as session:
            for n in range(args.deliveries):
                record_event(
                    session, "bench.ping", data={"upstream_id": f"ping-{n}"}, object_id=f"obj_{n % 50}"
                )
        before = arrivals.count
        worker = DeliveryWorker(ctx.sessions, ctx.vault, allow_private=True)
        t0 = time.perf_counter()
        await worker.run_until_idle()
        elapsed = time.perf_counter() - t0
        delivered = arrivals.count - before
        with ctx.sessions() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(models.WebhookDelivery)
                .where(models.WebhookDelivery.status == "pending")
            )
    finally:
        await engine.stop()
        await ctx.aclose()
        receiver.shutdown()
        sandbox.terminate()
        sandbox.wait(timeout=15)

    print(f"sync_interval {args.sync_interval:g} s")
    print(f"delivery_interval {args.delivery_interval:g} s")
    print(f"latency_samples {len(latencies)} count")
    if latencies:
        print(f"latency_p50 {pct(latencies, 0.5) * 1000:.0f} ms")
        print(f"latency_p99 {pct(latencies, 0.99) * 1000:.0f} ms")
        print(f"latency_mean {statistics.mean(latencies) * 1000:.0f} ms")
    print(f"deliveries {delivered} count")
    print(f"deliveries_per_s {delivered / elapsed:.0f} 1/s")
    print(f"deliveries_left_pending {pending} count")
    print(f"bad_signatures {arrivals.bad} count")
    print(f"runtime {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--sync-interval", type=float, default=2.0)
    parser.add_argument("--delivery-interval", type=float, default=1.0)
    parser.add_argument("--deliveries", type=int, default=2000)
    asyncio.run(main(parser.parse_args()))
