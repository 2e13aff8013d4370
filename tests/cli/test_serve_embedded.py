"""`plooto-api serve` with no upstream, as a new user runs it: embedded sandbox, first sync, token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from conftest import free_port
from plooto_api.cli.serve import _Stopper

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


def _start(
    tmp_path: Path, port: int, name: str, db_env: dict[str, str]
) -> tuple[subprocess.Popen[str], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOTO_API_")} | db_env
    out = tmp_path / f"{name}.out"
    with out.open("w") as handle:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    return proc, out


def _wait_for_token(proc: subprocess.Popen[str], out: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"token:\s+(papi_\S+)", out.read_text())
        if match:
            return match.group(1)
        assert proc.poll() is None, out.read_text()
        time.sleep(0.1)  # waiting for a child process's first sync to finish
    raise AssertionError(out.read_text())


def _stop(proc: subprocess.Popen[str], how: signal.Signals = signal.SIGINT) -> None:
    proc.send_signal(how)
    assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_serve_runs_the_embedded_sandbox_and_survives_a_restart(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    port = free_port()
    proc, out = _start(tmp_path, port, "first", process_database_env)
    try:
        token = _wait_for_token(proc, out)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        bills = httpx.get(f"{base}/bills", params={"limit": 100}, headers=headers).json()
        assert len(bills["data"]) == 100 and bills["has_more"]
        connection = httpx.get(f"{base}/connections", headers=headers).json()["data"][0]
        assert connection["state"] == "healthy" and connection["username"] == "controller@northwind-cpa.test"
        assert httpx.get(f"{base}/bills", headers={"Authorization": "Bearer papi_wrong"}).status_code == 401
    finally:
        _stop(proc)
    first = out.read_text()
    assert "831 created" in first or " created" in first
    # Quoted, so that a shell such as zsh does not take the `?` for a pattern.
    assert re.search(
        r'try: +curl -H "Authorization: Bearer papi_\S+" "http://127\.0\.0\.1:\d+/bills\?limit=3"', first
    )
    sandbox_url = re.search(r"sandbox: (http://\S+)", first)
    assert sandbox_url is not None
    with pytest.raises(httpx.TransportError):  # the sandbox stopped with the gateway
        httpx.get(sandbox_url.group(1) + "/login", timeout=2)

    proc, out = _start(tmp_path, port, "second", process_database_env)
    try:
        assert _wait_for_token(proc, out) == token  # the same admin token
    finally:
        _stop(proc, signal.SIGTERM)  # as a service manager stops it
    second = out.read_text()
    assert "plooto-api stopped" in second
    with pytest.raises(httpx.TransportError):  # SIGTERM stops the sandbox too
        httpx.get(sandbox_url.group(1) + "/login", timeout=2)
    assert "0 created" in second
    assert "portal.signed_in" not in second  # the saved session was reused: no new login, no MFA
    assert re.search(r"sandbox: (http://\S+)", second).group(1) == sandbox_url.group(1)  # type: ignore[union-attr]


def test_a_sigterm_is_kept_until_the_server_exists_and_then_stops_it() -> None:
    stopper = _Stopper()
    with pytest.raises(KeyboardInterrupt):  # before uvicorn: as Ctrl-C
        stopper(signal.SIGTERM, None)
    assert stopper.requested  # kept, should a weakref callback or __del__ have dropped the interrupt
    server = stopper.server = uvicorn.Server(uvicorn.Config(app=lambda: None))
    stopper(signal.SIGTERM, None)  # uvicorn starting (or restoring this handler when it is done)
    assert server.should_exit
