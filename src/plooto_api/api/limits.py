"""Abuse limits on the gateway's own API: login attempt rate limits and request body size.

- Login attempts (`POST /authenticate`, `POST /authenticate/mfa`, a connection's
  `POST /connections/{id}/mfa` and `/mfa/resend`) are counted in an in-process sliding window per
  client address and per login (a username; for MFA codes the challenge, which belongs to one
  username and costs a login attempt to obtain, or the connection). Over the limit: 429 with
  Retry-After. Only a request that passed validation, and where a token is needed its checks, is
  an attempt: a caller without a token cannot spend the budget of a connection's operator.
  The client address is the socket's peer; a gateway behind a proxy sees the proxy's address.
- Request bodies are limited (JSON: `max_body_bytes`; multipart uploads: `max_upload_bytes` plus
  the JSON allowance). A declared Content-Length over the limit is refused before anything is
  read; a body without one (chunked) is counted as it streams and refused once it passes the limit.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plooto_api.api.errors import ApiError
from plooto_api.config import Settings
from plooto_api.services.connections import normalize_username

Clock = Callable[[], float]


class SlidingWindowLimiter:
    """At most `limit` hits per key in any `window` seconds; the clock is injectable for tests."""

    def __init__(self, limit: int, window: float, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> float | None:
        """Count one attempt for `key`; None if allowed, else seconds until one would be."""
        wait = self.wait(key)
        if wait is None:
            self.record(key)
        return wait

    def wait(self, key: str) -> float | None:
        """None if an attempt for `key` would be allowed now, else seconds until one would be (counts
        nothing)."""
        now = self.clock()
        hits = self._hits.get(key)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if hits and len(hits) >= self.limit:
            return hits[0] + self.window - now
        return None

    def record(self, key: str) -> None:
        """Count one attempt for `key` (one `wait` allowed)."""
        now = self.clock()
        self._hits.setdefault(key, deque()).append(now)
        self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        # Keep memory bounded under a spray of distinct keys: drop keys with no recent hits.
        if len(self._hits) > 10_000:
            for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
                del self._hits[key]


class LoginAttemptLimits:
    """The per-client and per-username limiters of login and MFA attempts."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        window = settings.auth_attempt_window_seconds
        self.per_client = SlidingWindowLimiter(settings.auth_attempts_per_client, window, clock)
        self.per_username = SlidingWindowLimiter(settings.auth_attempts_per_username, window, clock)

    def check(self, client: str, login: str | None) -> None:
        """Count an attempt of `client` on `login` (a key of login_key, challenge_key or
        connection_login_key); ApiError 429 (with Retry-After) if a limit is exceeded. A refused attempt
        counts against neither limit, so it does not push back the time the answer names."""
        keys = [(self.per_client, f"client:{client}")]
        if login:
            keys.append((self.per_username, login))
        wait = max((w for limiter, key in keys if (w := limiter.wait(key)) is not None), default=None)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited", f"too many login attempts; try again in {seconds} s",
                           headers={"Retry-After": str(seconds)})  # fmt: skip
        for limiter, key in keys:
            limiter.record(key)


def login_key(username: str) -> str:
    return f"user:{normalize_username(username)}"


def challenge_key(challenge_id: str) -> str:
    return f"challenge:{challenge_id}"


def connection_login_key(connection_id: str) -> str:
    return f"connection:{connection_id}"


def count_login_attempt(request: Request, login: str | None) -> None:
    """Count this request as an attempt on `login` (see LoginAttemptLimits.check). Called by the
    route once the request is valid and its caller allowed, before anything goes to the portal."""
    limits: LoginAttemptLimits | None = getattr(request.app.state, "login_limits", None)
    if limits is not None:
        limits.check(request.client.host if request.client else "unknown", login)


class PayloadTooLarge(StarletteHTTPException):
    """The body passed the size limit while it was being read (answered as 413 payload_too_large)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit, without reading more than the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def _limit(self, scope: Scope) -> int:
        for name, value in scope.get("headers", []):
            if name == b"content-type" and value.lower().startswith(b"multipart/form-data"):
                return self.max_upload_bytes + self.max_body_bytes  # the file plus its form fields
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await self._refuse(scope, send, limit, declared < 0)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, send: Send, limit: int, malformed: bool) -> None:
        request_id = scope.get("state", {}).get("request_id")
        if malformed:
            status, code, message = 400, "invalid_request", "the Content-Length header is not a number"
        else:
            status, code, message = 413, "payload_too_large", f"the request body is larger than {limit} bytes"
        body = json.dumps(
            {"error": {"code": code, "message": message, "param": None, "request_id": request_id}}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
