"""Login attempt limits: an attempt one limit refuses counts against neither, so the wait it names
holds (the per-client and per-username limits, default 10 and 5 a minute)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from plooto_api.api.limits import LoginAttemptLimits
from plooto_api.config import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(client: TestClient, settings: Settings) -> FakeClock:
    fake = FakeClock()
    client.app.state.login_limits = LoginAttemptLimits(settings, clock=fake)  # type: ignore[attr-defined]
    return fake


def _login(client: TestClient, username: str) -> tuple[int, str | None]:
    # No portal is configured, so an admitted attempt is 503 no_upstream; a limited one is 429.
    response = client.post("/authenticate", json={"username": username, "password": "x"})
    return response.status_code, response.headers.get("Retry-After")


def test_an_attempt_the_client_limit_refuses_does_not_use_the_usernames_budget(
    client: TestClient, clock: FakeClock
) -> None:
    assert [_login(client, f"other{i}@firm.test")[0] for i in range(10)] == [503] * 10  # the client's ten
    clock.now += 30
    assert [_login(client, "a@firm.test") for _ in range(5)] == [(429, "30")] * 5
    clock.now += 31  # past the wait named
    assert _login(client, "a@firm.test")[0] == 503


def test_an_attempt_the_username_limit_refuses_does_not_use_the_clients_budget(
    client: TestClient, clock: FakeClock
) -> None:
    assert [_login(client, "a@firm.test")[0] for _ in range(5)] == [503] * 5  # the username's five
    clock.now += 1
    assert [_login(client, "a@firm.test") for _ in range(5)] == [(429, "59")] * 5
    # The client spent five attempts, not ten: five more usernames get in.
    assert [_login(client, f"other{i}@firm.test")[0] for i in range(5)] == [503] * 5
    assert _login(client, "another@firm.test") == (429, "59")
