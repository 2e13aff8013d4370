"""Fixtures for the sandbox suite: in-process apps (TestClient) and one real uvicorn server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

from plooto_sandbox import SandboxConfig, create_app
from sandbox.sandbox_helpers import CONTROLLER, Portal, free_port, login, make_client


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


@pytest.fixture
def portal(client: TestClient) -> Portal:
    headers = login(client, CONTROLLER)
    companies = client.get("/api/companies", headers=headers).json()["items"]
    return Portal(client, headers, companies[0]["companyId"])


@pytest.fixture(scope="session")
def live_url() -> Iterator[str]:
    """A real uvicorn server on a loopback port, in a background thread."""
    port = free_port()
    app = create_app(SandboxConfig(seed=11, companies=2, bills_per_company=25))
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="critical", access_log=False, date_header=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "sandbox did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
