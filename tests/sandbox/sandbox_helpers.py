"""Helpers shared by the sandbox tests: HTML sign-in, MFA codes, and an in-process portal handle."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pyotp
from fastapi.testclient import TestClient

from plooto_sandbox import SandboxConfig, create_app

PASSWORD = "sandbox-password"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
CONTROLLER = "controller@northwind-cpa.test"
CLERK = "clerk@northwind-cpa.test"
TOKEN_RE = re.compile(r'name="__RequestVerificationToken" value="([^"]*)"')


def form_token(html: str) -> str:
    found = TOKEN_RE.search(html)
    assert found, "no anti-forgery token on the page"
    return found.group(1)


def sandbox_now(client: httpx.Client | TestClient) -> datetime:
    return datetime.fromisoformat(client.get("/__sandbox/clock").json()["now"].replace("Z", "+00:00"))


def mfa_code(client: httpx.Client | TestClient, email: str) -> str:
    if email == CONTROLLER:
        return pyotp.TOTP(TOTP_SECRET).at(sandbox_now(client))
    messages = client.get("/__sandbox/outbox", params={"to": email, "kind": "Sms"}).json()
    assert messages, "no SMS code in the outbox"
    return str(messages[-1]["code"])


def start_login(client: httpx.Client | TestClient, email: str, password: str = PASSWORD) -> httpx.Response:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"email": email, "passphrase": password, "__RequestVerificationToken": form_token(page.text)},
        follow_redirects=False,
    )


def login(client: httpx.Client | TestClient, email: str, trust_device: bool = False) -> dict[str, str]:
    """Sign in through the HTML flow (MFA included); returns the anti-CSRF header for the API."""
    response = start_login(client, email)
    assert response.status_code == 303, response.text
    if response.headers["location"] == "/mfa":
        page = client.get("/mfa")
        data = {"code": mfa_code(client, email), "__RequestVerificationToken": form_token(page.text)}
        if trust_device:
            data["trustDevice"] = "true"
        done = client.post("/mfa", data=data, follow_redirects=False)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/select-company"
    return {"X-XSRF-TOKEN": client.cookies["XSRF-TOKEN"]}


@dataclass
class Portal:
    """An in-process sandbox with a signed-in controller."""

    client: TestClient
    headers: dict[str, str]
    company_id: str

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def company(self, suffix: str) -> str:
        return f"/api/companies/{self.company_id}{suffix}"

    def advance(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.client.post("/__sandbox/clock", json=body).json()
        return result

    def mutate(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/__sandbox/mutate", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def make_client(**config: Any) -> TestClient:
    # Lifecycle tests move the clock by days; sessions must outlive that unless a test is about expiry.
    settings = {
        "seed": 7,
        "companies": 2,
        "bills_per_company": 30,
        "session_idle_minutes": 60 * 24 * 365,
        "session_absolute_hours": 24 * 365,
        **config,
    }
    return TestClient(create_app(SandboxConfig(**settings)), base_url="http://testserver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
