"""Read API benchmark: 1,000,000 bills across 100 companies, filtered list latency vs the floor.

Loads the store directly (bulk inserts), starts the gateway's API on it (jobs off), then drives
`GET /bills?company=…&status=…&limit=100` from a concurrent client. The floor is the same query run
on the database plus JSON serialization of the rows, in this process. Prints `name value unit`.

    .venv/bin/python bench/bench_reads.py [--bills 1000000] [--companies 100] [--requests 3000]
        [--concurrency 1 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import insert, select

from plooto_api import mapping, schemas
from plooto_api.config import Settings
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.base import new_id
from plooto_api.store.database import create_db_engine, session_factory, transaction, upgrade_to_head

STATUSES = [
    "pending_approval",
    "approved",
    "scheduled",
    "partially_paid",
    "paid",
    "rejected",
    "void",
    "draft",
]
APPROVALS = {"pending_approval": "pending", "rejected": "rejected", "draft": "not_required"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(url: str, bills: int, companies: int) -> tuple[list[str], str]:
    """Bulk-load companies, vendors and bills; returns company ids and an admin token."""
    engine = create_db_engine(url)
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    rng = random.Random(1)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with transaction(sessions) as session:
        conn = models.Connection(id=new_id("conn"), username="bench@firm.test", upstream_url="http://x")
        session.add(conn)
        session.flush()
        company_ids = []
        for c in range(companies):
            cid = new_id("cmp")
            company_ids.append(cid)
            session.add(models.Company(id=cid, connection_id=conn.id, upstream_id=f"C{c}", name=f"Company {c}",
                                       country="CA", base_currency="CAD", created_at=now, updated_at=now))  # fmt: skip
        session.flush()
        vendors = {}
        for cid in company_ids:
            vendors[cid] = [new_id("ven") for _ in range(20)]
            session.execute(insert(models.Vendor), [
                {"id": v, "connection_id": conn.id, "company_id": cid, "upstream_id": v, "name": f"Vendor {i}",
                 "currency": "CAD", "created_at": now, "updated_at": now, "payment_methods": [],
                 "status": "active", "network_connected": False}
                for i, v in enumerate(vendors[cid])
            ])  # fmt: skip
        _, token = create_token(session, scopes=["*"], name="bench")
    per_company = bills // companies
    batch: list[dict[str, object]] = []
    started = time.perf_counter()
    # Rows are written as the gateway writes them: a normalized object through the one mapping,
    # which also stores its JSON document.
    for cid in company_ids:
        for n in range(per_company):
            status = STATUSES[n % len(STATUSES)]
            total = Decimal(rng.randrange(5_000, 5_000_000)).scaleb(-2)
            money = {"amount": total, "currency": "CAD"}
            bill = schemas.Bill.model_validate({
                "id": new_id("bill"), "company_id": cid, "upstream_id": f"{cid}-{n}",
                "created_at": now, "updated_at": now,
                "upstream": {"status_raw": "Open", "fetched_at": now, "url": None},
                "vendor_id": vendors[cid][n % 20], "number": f"INV-{n}", "issue_date": date(2026, 10, 1),
                "due_date": date(2026, 11, 1) + timedelta(days=n % 60),
                "line_items": [{"description": "Services", "unit_price": money, "amount": money}],
                "subtotal": money, "tax": {"amount": Decimal("0.00"), "currency": "CAD"}, "total": money,
                "amount_paid": {"amount": Decimal("0.00"), "currency": "CAD"}, "amount_due": money,
                "status": status, "approval": {"status": APPROVALS.get(status, "approved"), "steps": []},
            })  # fmt: skip
            batch.append(mapping.row_values(bill, connection_id=conn.id).values)
            if len(batch) == 20_000:
                with transaction(sessions) as session:
                    session.execute(insert(models.Bill), batch)
                batch = []
    if batch:
        with transaction(sessions) as session:
            session.execute(insert(models.Bill), batch)
    print(f"load_bills_seconds {time.perf_counter() - started:.1f} s", flush=True)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn_:
            conn_.exec_driver_sql("ANALYZE")
    engine.dispose()
    return company_ids, token


def floor(url: str, company_ids: list[str], samples: int) -> list[float]:
    """The same query straight on the database, rows serialized to JSON: the least an API could do."""
    engine = create_db_engine(url)
    rng = random.Random(2)
    timings = []
    table = models.Bill.__table__
    with engine.connect() as conn:
        for _ in range(samples):
            cid, status = rng.choice(company_ids), rng.choice(STATUSES)
            started = time.perf_counter()
            rows = conn.execute(
                select(table).where(table.c.company_id == cid, table.c.status == status)
                .order_by(table.c.id).limit(101)
            ).mappings().all()  # fmt: skip
            json.dumps([{k: v for k, v in r.items() if k != "document"} for r in rows[:100]], default=str)
            timings.append(time.perf_counter() - started)
    engine.dispose()
    return timings


async def drive(
    base: str, token: str, company_ids: list[str], requests: int, concurrency: int
) -> tuple[list[float], float]:
    rng = random.Random(3)
    timings: list[float] = []
    queue = [(rng.choice(company_ids), rng.choice(STATUSES)) for _ in range(requests)]
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=30) as client:  # fmt: skip

        async def worker() -> None:
            while queue:
                cid, status = queue.pop()
                started = time.perf_counter()
                response = await client.get("/bills", params={"company": cid, "status": status, "limit": 100})
                timings.append(time.perf_counter() - started)
                response.raise_for_status()

        for _ in range(20):  # warm-up
            await client.get("/bills", params={"company": company_ids[0], "status": "paid", "limit": 100})
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return timings, len(timings) / elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bills", type=int, default=1_000_000)
    parser.add_argument("--companies", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="requests in flight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        url = (
            os.environ.get("PLOOTO_API_BENCH_DATABASE_URL")
            or Settings(data_dir=data_dir).resolved_database_url
        )
        company_ids, token = load(url, args.bills, args.companies)
        port = _free_port()
        env = {**os.environ, "PLOOTO_API_DATABASE_URL": url, "PLOOTO_API_LOG_LEVEL": "warning"}
        # The API alone (no sync or webhook jobs, no sandbox): reads are served from the store.
        serve = (
            "import sys, uvicorn; from plooto_api.api.app import create_app; from plooto_api.config import Settings;"
            "uvicorn.run(create_app(Settings(data_dir=sys.argv[1]), run_jobs=False), host='127.0.0.1',"
            " port=int(sys.argv[2]), log_level='warning')"
        )
        server = subprocess.Popen(
            [sys.executable, "-c", serve, str(data_dir), str(port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            results = {
                c: asyncio.run(drive(base, token, company_ids, args.requests, c)) for c in args.concurrency
            }
            status = Path(f"/proc/{server.pid}/status").read_text()
            peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        floors = floor(url, company_ids, 500)
    floor_p50 = statistics.median(floors) * 1000
    print(f"bills {args.bills} count")
    for concurrency, (timings, rps) in results.items():
        print(f"api_c{concurrency}_p50 {pct(timings, 0.5):.2f} ms")
        print(f"api_c{concurrency}_p99 {pct(timings, 0.99):.2f} ms")
        print(f"api_c{concurrency}_requests_per_second {rps:.0f} req/s")
        print(f"api_c{concurrency}_p50_over_floor {pct(timings, 0.5) / floor_p50:.2f} x")
    print(f"floor_p50 {floor_p50:.2f} ms")
    print(f"floor_p99 {pct(floors, 0.99):.2f} ms")
    print(f"server_peak_rss {peak_kb / 1024:.0f} MB")


if __name__ == "__main__":
    main()
