"""Boundaries: the sandbox never imports the gateway, and never prints secrets."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from sandbox.sandbox_helpers import CONTROLLER, PASSWORD, TOTP_SECRET, free_port, login


def test_sandbox_never_imports_the_gateway() -> None:
    code = (
        "import sys, plooto_sandbox, plooto_sandbox.__main__, plooto_sandbox.app;"
        "from plooto_sandbox import SandboxConfig, create_app; create_app(SandboxConfig(companies=1, bills_per_company=2));"
        "bad = [m for m in sys.modules if m.startswith('plooto_api')]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secrets_in_output_even_at_debug_level() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "plooto_sandbox", "--port", str(port), "--companies", "1",
         "--bills-per-company", "3", "--log-level", "debug", "--session-idle-minutes", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.stdout.readline().startswith("plooto-sandbox listening on"):
                break
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            headers = login(client, CONTROLLER)
            client.get("/api/companies", headers=headers)
            session = client.get("/api/session", headers=headers).json()
            assert session["idleExpiresAt"] == "2026-03-02T14:05:00Z"  # --session-idle-minutes 5
            cookies = [value for value in client.cookies.values() if len(value) > 16]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    for secret in [PASSWORD, TOTP_SECRET, *cookies]:
        assert secret not in output
