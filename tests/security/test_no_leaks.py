"""No leaks, end to end: `plooto-api serve` (embedded sandbox, log level debug) is driven through
authentication, a sync, a payment, a webhook endpoint and its deliveries, credential replacement and
refusals; then the database file (and its WAL), the log output, every HTTP response body, every
webhook payload and the OpenAPI document are searched for every secret the gateway handled.

Secrets searched for: the demo password, the TOTP secret, the admin and session tokens (beyond
their identifying prefix), the webhook signing secret (beyond `whsec_`), and every portal cookie
value the sandbox issued (session tokens, XSRF tokens, trusted-device tokens, read from the
sandbox's own saved state after it stops) plus every full bank account number the sandbox holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port
from plooto_sandbox.persistence import load_state
from security.conftest import CONTROLLER, PASSWORD, TOTP_SECRET

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]
TOKEN_PREFIX_LENGTH = 11  # `papi_` + 6 characters are shown to people


class Hooks:
    """A loopback webhook receiver that records raw bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                hooks.bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


def _wait(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # waiting on another process (the gateway, its worker, the receiver)
    raise AssertionError(f"timed out waiting for {what}")


def _sandbox_secrets(state_file: Path) -> dict[str, str]:
    """Cookie values and full account numbers the (stopped) sandbox saved in its state file."""
    state = load_state(state_file)  # the sandbox's own file, written by the sandbox we ran
    assert state is not None
    found: dict[str, str] = {}
    for token, session in state.sessions.items():
        found[f"portal session cookie {token[:4]}…"] = token
        found[f"portal XSRF token {session.xsrf_token[:4]}…"] = session.xsrf_token
    for token in state.trusted_devices:
        found[f"trusted-device cookie {token[:4]}…"] = token

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 4 or value is None or isinstance(value, (str, int, float, bool, bytes)):
            return
        if isinstance(value, dict):
            for item in value.values():
                walk(item, depth + 1)
            return
        if isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item, depth + 1)
            return
        number = getattr(value, "account_number", None)
        if isinstance(number, str) and len(number) >= 6:
            found[f"account number …{number[-4:]}"] = number
        names = list(getattr(value, "__slots__", ())) + list(getattr(value, "__dict__", {}))
        for name in names:
            walk(getattr(value, name, None), depth + 1)

    walk(state.objects)
    walk(state.companies)
    return found


@pytest.mark.slow
def test_no_secret_reaches_the_database_logs_responses_or_webhooks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOOTO_API_", "PLOOTO_PASSWORD"))}
    env.update(PLOOTO_API_LOG_LEVEL="debug", PLOOTO_API_WEBHOOK_ALLOW_PRIVATE="1",
               PLOOTO_API_SYNC_FAST_INTERVAL_SECONDS="2")  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stdout_path, stderr_path = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=out,
                                stderr=err, text=True)  # fmt: skip
    responses: list[tuple[str, str]] = []  # (what, body) of every response the gateway gave us
    meant_for: dict[str, str] = {}  # a secret's name -> the one response meant to carry it
    hooks = Hooks()
    db_while_running = b""
    try:
        admin = _wait(lambda: (m := re.search(r"token:\s+(papi_\S+)", stdout_path.read_text())) and m.group(1),
                      "the admin token", timeout=120)  # fmt: skip
        _wait(lambda: _up(base), "the gateway to listen")
        client = httpx.Client(base_url=base, timeout=60)
        admin_headers = {"Authorization": f"Bearer {admin}"}

        def call(what: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = client.request(method, path, **kwargs)
            responses.append((f"{what} ({method} {path} → {response.status_code})", response.text))
            return response

        refused = call("wrong password", "POST", "/authenticate",
                       json={"username": CONTROLLER, "password": "not-" + PASSWORD})  # fmt: skip
        assert refused.status_code == 401
        login = call("login", "POST", "/authenticate",
                     json={"username": CONTROLLER, "password": PASSWORD, "totp_secret": TOTP_SECRET})  # fmt: skip
        assert login.status_code == 201, login.text
        session_token = login.json()["session_token"]
        meant_for["session token"] = responses[-1][0]
        session_headers = {"Authorization": f"Bearer {session_token}"}
        connection_id = login.json()["connection"]["id"]

        # The sync: bills visible through the session token.
        bills = _wait(lambda: call("bills", "GET", "/bills", headers=session_headers,
                                   params={"status": "approved", "limit": 100}).json()["data"],
                      "approved bills")  # fmt: skip
        hook = call("webhook endpoint", "POST", "/webhook_endpoints", headers=admin_headers,
                    json={"url": hooks.url})  # fmt: skip
        assert hook.status_code == 201, hook.text
        webhook_secret = hook.json()["secret"]
        meant_for["webhook secret"] = responses[-1][0]

        paid = None
        for bill in bills:  # the first approved bill the portal lets us pay today
            response = call("payment", "POST", "/create_payment", headers={**admin_headers,
                            "Idempotency-Key": str(uuid.uuid4())}, json={"bill_id": bill["id"]})  # fmt: skip
            if response.status_code in (200, 201, 202):
                paid = response.json()
                break
        assert paid is not None, responses[-1]
        _wait(lambda: hooks.bodies, "a webhook delivery", timeout=60)

        patched = call("set password", "PATCH", f"/connections/{connection_id}", headers=admin_headers,
                       json={"password": PASSWORD, "totp_secret": TOTP_SECRET})  # fmt: skip
        assert patched.status_code == 200, patched.text
        for what, path in (("connections", "/connections"), ("events", "/events?limit=100"),
                           ("audit", "/audit?limit=100"), ("companies", "/companies"),
                           ("bank accounts", "/bank_accounts?limit=100"), ("vendors", "/vendors?limit=100"),
                           ("payments", "/payments?limit=100"), ("openapi", "/openapi.json"),
                           ("metrics", "/metrics"), ("operation", f"/operations/{paid.get('operation_id', 'x')}"),
                           ("docs", "/docs")):  # fmt: skip
            call(what, "GET", path, headers=admin_headers)
        assert (
            call("bad token", "GET", "/bills", headers={"Authorization": f"Bearer {admin}x"}).status_code
            == 401
        )
        big = call("oversized", "POST", "/authenticate", content=b"{" + b" " * (2 << 20) + b"}",
                   headers={"content-type": "application/json"})  # fmt: skip
        assert big.status_code == 413
        time.sleep(2.5)  # one more scheduled sync cycle, to seal the session state after all this
        db_while_running = _database_bytes(tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        hooks.server.shutdown()
    assert proc.returncode == 0, stderr_path.read_text()[-3000:]

    secrets = {
        "demo password": PASSWORD,
        "TOTP secret": TOTP_SECRET,
        "admin token": admin[TOKEN_PREFIX_LENGTH:],
        "session token": session_token[TOKEN_PREFIX_LENGTH:],
        "webhook secret": webhook_secret.removeprefix("whsec_"),
        **_sandbox_secrets(tmp_path / ".plooto-api" / "sandbox" / "state.pickle"),
    }
    assert any(k.startswith("portal session cookie") for k in secrets)
    assert any(k.startswith("account number") for k in secrets)
    log = stderr_path.read_text()
    stdout = stdout_path.read_text()
    assert "[debug" in log and "portal.signed_in" in log  # the log really was at debug level
    places: dict[str, bytes] = {
        "database (while running)": db_while_running,
        "database (after stop)": _database_bytes(tmp_path),
        "log (stderr)": log.encode(),
        "stdout, apart from the admin token's own lines": "\n".join(
            line for line in stdout.splitlines() if not line.lstrip().startswith(("token:", "try:"))
        ).encode(),
        **{f"webhook payload {n}": body for n, body in enumerate(hooks.bodies)},
    }
    for what, body in responses:
        places[f"response: {what}"] = body.encode()
    leaks = []
    for name, value in secrets.items():
        for place, content in places.items():
            if place == f"response: {meant_for.get(name)}":
                continue  # the response that hands the secret out, once
            if value.encode() in content or value.lower().encode() in content.lower():
                leaks.append(f"{name} in {place}")
    for place, content in places.items():
        if re.search(rb"\.Plooto\.(Session|TrustedDevice)=[^;\s\"']{8}|XSRF-TOKEN=[^;\s\"']{8}", content):
            leaks.append(f"a portal cookie assignment in {place}")
    assert leaks == []
    # The scenario did what it says: a sync, a payment, webhook deliveries, audit entries.
    assert b"payment" in b"".join(hooks.bodies)
    assert any(w.startswith("audit") and '"audit_entry"' in b for w, b in responses)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _database_bytes(tmp_path: Path) -> bytes:
    """The SQLite file and its WAL as stored, and every table as text (decoded columns)."""
    path = tmp_path / ".plooto-api" / "plooto-api.db"
    raw = b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        text = json.dumps(
            {t: [list(map(repr, row)) for row in db.execute(f'SELECT * FROM "{t}"')] for t in tables}
        )
    return raw + text.encode()
