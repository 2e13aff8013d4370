"""Benchmark the Plooto portal emulator: seeding speed, incremental-sync cost, and API throughput.

Prints one figure per line as `name value unit`. Bounded to well under two minutes.
Run: .venv/bin/python bench/bench_sandbox.py
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from datetime import datetime

import httpx
import pyotp
from fastapi.testclient import TestClient

from plooto_sandbox import SandboxConfig, create_app
from plooto_sandbox.config import DEFAULT_START_TIME
from plooto_sandbox.seed import seed_portal

CONTROLLER = "controller@northwind-cpa.test"
PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
TOKEN_RE = re.compile(r'name="__RequestVerificationToken" value="([^"]*)"')
LOAD_SECONDS = 8.0
CONCURRENCY = 16


def figure(name: str, value: float, unit: str) -> None:
    print(f"{name} {value:.3f} {unit}", flush=True)


def login(client: httpx.Client | TestClient) -> dict[str, str]:
    """HTML sign-in with TOTP; returns the anti-CSRF header for API calls."""
    page = client.get("/login")
    token = TOKEN_RE.search(page.text)
    assert token
    client.post(
        "/login",
        data={"email": CONTROLLER, "passphrase": PASSWORD, "__RequestVerificationToken": token.group(1)},
    )
    mfa_page = client.get("/mfa")
    now = datetime.fromisoformat(client.get("/__sandbox/clock").json()["now"].replace("Z", "+00:00"))
    mfa_token = TOKEN_RE.search(mfa_page.text)
    assert mfa_token
    client.post(
        "/mfa",
        data={"code": pyotp.TOTP(TOTP_SECRET).at(now), "__RequestVerificationToken": mfa_token.group(1)},
    )
    return {"X-XSRF-TOKEN": client.cookies["XSRF-TOKEN"]}


def bench_seed() -> None:
    started = time.perf_counter()
    state = seed_portal(42, 10, 10_000, DEFAULT_START_TIME)
    elapsed = time.perf_counter() - started
    assert len(state.objects["bill"]) == 100_000
    figure("seed_100k_bills", elapsed, "s")


def bench_incremental(bills: int) -> None:
    """Median time of `modifiedSince` returning 10 changed bills out of `bills`, in-process."""
    app = create_app(
        SandboxConfig(companies=1, bills_per_company=bills, rate_limit_per_second=1e6, rate_limit_burst=10**6)
    )
    with TestClient(app) as client:
        headers = login(client)
        company_id = client.get("/api/companies", headers=headers).json()["items"][0]["companyId"]
        client.post("/__sandbox/clock", json={"advance_minutes": 1})
        since = client.get("/__sandbox/clock").json()["now"]
        client.post("/__sandbox/mutate", json={"action": "modifyBills", "companyId": company_id, "count": 10})
        samples: list[float] = []
        for _ in range(50):
            started = time.perf_counter()
            body = client.get(
                f"/api/companies/{company_id}/bills",
                headers=headers,
                params={"modifiedSince": since, "pageSize": 100},
            ).json()
            samples.append(time.perf_counter() - started)
            assert body["totalCount"] == 10
        samples.sort()
        figure(
            f"modified_since_10_changes_at_{bills // 1000}k_bills", samples[len(samples) // 2] * 1000, "ms"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def hammer(
    base_url: str, cookies: httpx.Cookies, headers: dict[str, str], path: str
) -> tuple[int, int]:
    """CONCURRENCY workers on one keep-alive pool for LOAD_SECONDS; returns (ok, errors)."""
    ok = errors = 0
    deadline = time.monotonic() + LOAD_SECONDS
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=base_url, cookies=cookies, headers=headers, limits=limits, timeout=30
    ) as client:

        async def worker() -> None:
            nonlocal ok, errors
            while time.monotonic() < deadline:
                response = await client.get(path)
                if response.status_code == 200:
                    ok += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok, errors


def bench_throughput() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plooto_sandbox",
            "--port",
            str(port),
            "--companies",
            "3",
            "--bills-per-company",
            "2000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line or line.startswith("plooto-sandbox listening on"):
                break
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=30) as client:
            headers = login(client)
            client.put("/__sandbox/rate-limit", json={"ratePerSecond": 1_000_000, "burst": 1_000_000})
            company_id = client.get("/api/companies", headers=headers).json()["items"][0]["companyId"]
            cookies = client.cookies
        path = f"/api/companies/{company_id}/bills?pageSize=25&pageNumber=3"
        started = time.perf_counter()
        ok, errors = asyncio.run(hammer(base_url, cookies, headers, path))
        elapsed = time.perf_counter() - started
        figure("api_requests_per_second", ok / elapsed, "req/s")
        figure("api_request_errors", errors, "count")
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    began = time.perf_counter()
    bench_seed()
    bench_incremental(10_000)
    bench_incremental(100_000)
    bench_throughput()
    figure("bench_total", time.perf_counter() - began, "s")


if __name__ == "__main__":
    main()
