"""Abuse limits: login attempts per client and per username (429 + Retry-After), body size (413)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from plooto_api.api.limits import BodySizeLimit, LoginAttemptLimits, SlidingWindowLimiter
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.store.database import transaction
from security.conftest import CLERK, PASSWORD, bearer


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


def _login(client: TestClient, username: str) -> int:
    # No portal is configured, so an admitted attempt is 503 no_upstream; a limited one is 429.
    return client.post("/authenticate", json={"username": username, "password": "x"}).status_code


def test_sliding_window_counts_hits_in_the_last_window_only() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 60, clock)
    assert [limiter.hit("k") for _ in range(3)] == [None, None, None]
    clock.now += 10
    assert limiter.hit("k") == pytest.approx(50)
    assert limiter.hit("other") is None
    clock.now += 50
    assert limiter.hit("k") is None  # the first three hits have left the window


def test_login_attempts_are_limited_per_username(client: TestClient, clock: FakeClock) -> None:
    assert [_login(client, "a@firm.test") for _ in range(5)] == [503] * 5
    refused = client.post("/authenticate", json={"username": "A@firm.test ", "password": "x"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "60"
    assert _login(client, "b@firm.test") == 503  # another username is not affected
    clock.now += 30
    assert client.post("/authenticate", json={"username": "a@firm.test", "password": "x"}
                       ).headers["Retry-After"] == "30"  # fmt: skip
    clock.now += 31
    assert _login(client, "a@firm.test") == 503


def test_login_attempts_are_limited_per_client(client: TestClient, clock: FakeClock) -> None:
    statuses = [_login(client, f"user{i}@firm.test") for i in range(12)]
    assert statuses == [503] * 10 + [429, 429]
    clock.now += 61
    assert _login(client, "user99@firm.test") == 503


def test_mfa_attempts_are_limited_per_challenge_and_client(client: TestClient, clock: FakeClock) -> None:
    body = {"challenge_id": "mfa_guess", "code": "123456"}
    statuses = [client.post("/authenticate/mfa", json=body).status_code for _ in range(6)]
    assert statuses == [404] * 5 + [429]
    other = [client.post("/authenticate/mfa", json={**body, "challenge_id": f"mfa_{i}"}).status_code
             for i in range(6)]  # fmt: skip
    assert other == [404] * 5 + [429]  # the client's ten attempts are spent (the refused one was not one)
    assert client.get("/health").status_code == 200  # other routes are not limited


def test_only_a_valid_allowed_request_is_an_attempt(
    client: TestClient, clock: FakeClock, make_token: Callable[..., str]
) -> None:
    # Anyone, with no token, spent a connection's budget of codes: the limit ran before the token's
    # check and was keyed by the path alone, so the operator's own code got 429. Bodies refused as
    # invalid counted too, and a token without the scope got 429 instead of 403.
    path = "/connections/conn_unknown/mfa"
    assert [client.post(path, json={"code": "123456"}).status_code for _ in range(12)] == [401] * 12
    narrow = bearer(make_token(["bills:read"]))
    assert [client.post(path, json={"code": "123456"}, headers=narrow).status_code for _ in range(6)] == [
        403
    ] * 6
    assert [client.post(f"{path}/resend", headers=narrow).status_code for _ in range(6)] == [403] * 6
    assert [client.post("/authenticate", json={"username": "a@firm.test"}).status_code for _ in range(6)] == [
        400
    ] * 6
    assert _login(client, "a@firm.test") == 503  # the first attempt of this client and this login
    admin = bearer(make_token(["*"]))
    assert client.post(path, json={"code": "123456"}, headers=admin).status_code == 404


def test_a_connections_codes_are_limited_per_connection(
    portal_client: TestClient, make_token: Callable[..., str], ctx: JobContext
) -> None:
    with transaction(ctx.sessions) as session:
        connection_id = create_connection(session, ctx.vault, username=CLERK, password=PASSWORD,
                                          upstream_url=str(ctx.settings.upstream_url)).id  # fmt: skip
    admin = bearer(make_token(["*"]))
    path = f"/connections/{connection_id}/mfa"
    statuses = [
        portal_client.post(path, json={"code": "123456"}, headers=admin).status_code for _ in range(6)
    ]
    assert statuses == [409] * 5 + [429]  # it waits for no code (nothing is sent), five times a minute


def test_limits_come_from_settings(settings: Settings) -> None:
    tight = settings.model_copy(update={"auth_attempts_per_client": 2, "auth_attempts_per_username": 1})
    limits = LoginAttemptLimits(tight, clock=FakeClock())
    limits.check("1.2.3.4", "x")
    with pytest.raises(Exception, match="too many"):
        limits.check("1.2.3.4", "x")


def test_a_declared_oversized_body_is_refused_with_413(client: TestClient) -> None:
    big = json.dumps({"username": "a@firm.test", "password": "x" * (1024 * 1024)})
    response = client.post("/authenticate", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and error["request_id"].startswith("req_")
    assert response.headers["X-Request-Id"] == error["request_id"]


def test_a_streamed_oversized_body_is_refused_with_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"username": "a@firm.test", "password": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/authenticate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_malformed_content_length_is_400(client: TestClient) -> None:
    response = client.post("/authenticate", content=b"{}", headers={"content-length": "lots"})
    assert response.status_code == 400


def test_the_middleware_stops_reading_once_the_limit_is_passed() -> None:
    read = 0

    async def receive() -> dict[str, object]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": read < 1000}

    async def app(scope: object, receive_: object, send: object) -> None:
        while (await receive_())["more_body"]:  # type: ignore[operator]
            pass

    async def send(message: object) -> None:
        pass

    middleware = BodySizeLimit(app, max_body_bytes=4096, max_upload_bytes=8192)  # type: ignore[arg-type]
    scope = {"type": "http", "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(Exception, match="larger than 4096"):
        asyncio.run(middleware(scope, receive, send))  # type: ignore[arg-type]
    assert read == 5  # 5000 bytes read of the million offered


def test_multipart_uploads_get_the_upload_allowance(client: TestClient, make_token: object) -> None:
    token = make_token(["bills:write"])  # type: ignore[operator]
    two_mib_pdf = b"%PDF-1.4 " + b"0" * (2 * 1024 * 1024)
    response = client.post("/create_bill", headers=bearer(token), data={"bill": "{}"},
                           files={"file": ("a.pdf", two_mib_pdf, "application/pdf")})  # fmt: skip
    assert response.status_code == 400  # past the size check: the empty bill is what is wrong
    assert response.json()["error"]["param"] != "file"
