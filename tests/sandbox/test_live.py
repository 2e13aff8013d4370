"""Over real HTTP: uvicorn on a loopback port (thread), and the `python -m plooto_sandbox` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox.sandbox_helpers import CLERK, CONTROLLER, free_port, login


@pytest.fixture
def live(live_url: str) -> httpx.Client:
    with httpx.Client(base_url=live_url, timeout=10) as control:
        control.post("/__sandbox/reset", json={"seed": 11, "companies": 2, "billsPerCompany": 25})
    return httpx.Client(base_url=live_url, timeout=10)


def test_totp_login_and_api_over_http(live: httpx.Client) -> None:
    headers = login(live, CONTROLLER)
    companies = live.get("/api/companies", headers=headers).json()["items"]
    assert len(companies) == 2
    bills = live.get(
        f"/api/companies/{companies[0]['companyId']}/bills", headers=headers, params={"pageSize": 5}
    )
    assert bills.status_code == 200 and bills.json()["totalCount"] == 25
    assert bills.headers["x-via"] == "api"


def test_sms_login_over_http(live: httpx.Client) -> None:
    headers = login(live, CLERK)
    assert live.get("/api/session", headers=headers).json()["mfaMethod"] == "Sms"


def test_dropped_response_closes_connection_after_applying(live: httpx.Client) -> None:
    headers = login(live, CONTROLLER)
    company_id = live.get("/api/companies", headers=headers).json()["items"][0]["companyId"]
    vendor_id = live.get(f"/api/companies/{company_id}/vendors", headers=headers).json()["items"][0][
        "vendorId"
    ]
    live.post(
        "/__sandbox/faults",
        json={"kind": "drop_response", "method": "POST", "pathPattern": "/bills$", "count": 1},
    )
    body = {
        "vendorId": vendor_id, "billNumber": "LOST-1", "issueDate": "2026-03-01", "dueDate": "2026-03-30",
        "lineItems": [{"description": "x", "amount": "12.34"}],
    }  # fmt: skip
    with pytest.raises(httpx.TransportError):
        live.post(f"/api/companies/{company_id}/bills", headers=headers, json=body)
    listing = live.get(f"/api/companies/{company_id}/bills", headers=headers, params={"pageSize": 500}).json()
    assert [b["billNumber"] for b in listing["items"]].count("LOST-1") == 1


def test_burst_over_http_gets_429(live: httpx.Client) -> None:
    headers = login(live, CONTROLLER)
    live.put("/__sandbox/rate-limit", json={"ratePerSecond": 5, "burst": 10})
    try:
        codes = [live.get("/api/session", headers=headers).status_code for _ in range(25)]
        assert 429 in codes
    finally:
        live.put("/__sandbox/rate-limit", json={"ratePerSecond": 25, "burst": 50})


def test_module_entry_point_prints_users_and_ready_line() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "plooto_sandbox", "--port", str(port), "--companies", "1",
         "--bills-per-company", "5", "--no-control"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("plooto-sandbox listening on"):
                break
        assert lines[-1].strip() == f"plooto-sandbox listening on http://127.0.0.1:{port}"
        printed = "".join(lines)
        assert CONTROLLER in printed and "sandbox-password" not in printed and "PLOOTOSANDBOX" not in printed
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/login").status_code == 200
            assert client.get("/__sandbox/clock").status_code == 404
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_date_header_is_the_portal_clock(live: httpx.Client) -> None:
    from email.utils import parsedate_to_datetime

    response = live.get("/login")
    assert response.headers.get_list("date") == ["Mon, 02 Mar 2026 14:00:00 GMT"]
    live.post("/__sandbox/clock", json={"advance_minutes": 90})
    later = parsedate_to_datetime(live.get("/api/session").headers["date"])
    assert later.isoformat() == "2026-03-02T15:30:00+00:00"


def _start(port: int, *extra: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "plooto_sandbox", "--port", str(port), "--companies", "1",
         "--bills-per-company", "5", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line or line.startswith("plooto-sandbox listening on"):
            return process
    raise AssertionError("sandbox did not start")


def test_state_file_survives_sigterm_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "portal.state"
    port = free_port()
    first = _start(port, "--state-file", str(state_file))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            company_id = client.post("/__sandbox/reset", json={}).json()["companies"][0]["companyId"]
            client.post(
                "/__sandbox/mutate", json={"action": "createBills", "companyId": company_id, "count": 3}
            )
    finally:
        first.terminate()  # SIGTERM: graceful shutdown writes the state file
        first.wait(timeout=15)
    assert state_file.exists()
    second = _start(port, "--state-file", str(state_file))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            headers = login(client, CONTROLLER)
            bills = client.get(f"/api/companies/{company_id}/bills", headers=headers).json()
            assert bills["totalCount"] == 8
    finally:
        second.terminate()
        second.wait(timeout=15)


def test_a_state_file_that_is_not_the_sandboxs_is_refused_in_one_line(tmp_path: Path) -> None:
    # It was "ignored" at start and written over at shutdown (pointed at /etc/passwd, it destroyed it).
    other = tmp_path / "notes.txt"
    other.write_text("someone's notes\n")
    done = subprocess.run(
        [sys.executable, "-m", "plooto_sandbox", "--port", "0", "--state-file", str(other)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "is not a plooto-sandbox state file" in done.stderr
    assert other.read_text() == "someone's notes\n"
