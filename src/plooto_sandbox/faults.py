"""The portal's edge: per-session rate limiting, request ids, and injectable faults for tests.

Implemented as one ASGI middleware so a fault can act before the app (latency, 5xx, session
revocation, MFA re-challenge), around it (renamed fields) or after it (a write applied but its
response lost).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plooto_sandbox.errors import PortalError
from plooto_sandbox.money import encode_portal_json
from plooto_sandbox.representations import FIELD_RENAMES
from plooto_sandbox.responses import envelope

SESSION_COOKIE = ".Plooto.Session"
FAULT_KINDS = frozenset(
    {"latency", "error", "drop_response", "revoke_session", "mfa_rechallenge", "shape_change"}
)
PORTAL_PREFIXES = ("/api", "/login", "/mfa", "/select-company", "/company", "/dashboard", "/logout")


@dataclass(slots=True)
class Fault:
    """One injected misbehaviour, targeted by method and path pattern."""

    fault_id: str
    kind: str
    method: str | None
    path_pattern: str | None
    remaining: int | None
    probability: float | None
    latency_ms: int
    status: int
    mode: str
    object_type: str | None
    from_field: str | None
    to_field: str | None
    hits: int = 0
    _compiled: re.Pattern[str] | None = field(default=None, repr=False)

    def matches(self, method: str, path: str) -> bool:
        """Does this fault target the request (and has it uses left)?"""
        if self.method and self.method.upper() != method.upper():
            return False
        if self._compiled is not None and not self._compiled.search(path):
            return False
        return self.remaining is None or self.remaining > 0

    def describe(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        return {
            "faultId": self.fault_id,
            "kind": self.kind,
            "method": self.method,
            "pathPattern": self.path_pattern,
            "remaining": self.remaining,
            # Portal JSON refuses floats; the probability is echoed as an exact decimal.
            "probability": Decimal(str(self.probability)) if self.probability is not None else None,
            "latencyMs": self.latency_ms,
            "status": self.status,
            "mode": self.mode,
            "objectType": self.object_type,
            "fromField": self.from_field,
            "toField": self.to_field,
            "hits": self.hits,
        }


class FaultBook:
    """The active faults and the seeded RNG that decides probabilistic ones."""

    def __init__(self, seed: int) -> None:
        self.faults: list[Fault] = []
        self.rng = random.Random(seed)
        self.counter = 0

    def add(self, spec: dict[str, Any]) -> Fault:
        """Validate a fault spec from the control API and activate it."""
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise PortalError(400, "ValidationFailed", f"kind must be one of {sorted(FAULT_KINDS)}")
        pattern = spec.get("pathPattern")
        try:
            compiled = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise PortalError(400, "ValidationFailed", f"pathPattern is not a valid regex: {exc}") from exc
        if kind == "shape_change" and not (
            spec.get("objectType") and spec.get("fromField") and spec.get("toField")
        ):
            raise PortalError(400, "ValidationFailed", "shape_change needs objectType, fromField and toField")
        mode = spec.get("mode", "abort")
        if mode not in ("abort", "502"):
            raise PortalError(400, "ValidationFailed", "mode must be 'abort' or '502'")
        count = spec.get("count")
        probability = spec.get("probability")
        self.counter += 1
        fault = Fault(
            fault_id=f"fault-{self.counter}",
            kind=kind,
            method=spec.get("method"),
            path_pattern=pattern,
            remaining=int(count) if count is not None else None,
            probability=float(probability) if probability is not None else None,
            latency_ms=int(spec.get("latencyMs", 1000)),
            status=int(spec.get("status", 503)),
            mode=mode,
            object_type=spec.get("objectType"),
            from_field=spec.get("fromField"),
            to_field=spec.get("toField"),
            _compiled=compiled,
        )
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault."""
        self.faults.clear()

    def remove(self, fault_id: str) -> bool:
        """Remove one fault; False if it was not active."""
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.fault_id != fault_id]
        return len(self.faults) != before

    def triggered(self, method: str, path: str) -> list[Fault]:
        """Faults that fire for this request; counted ones are consumed."""
        fired: list[Fault] = []
        for fault in self.faults:
            if not fault.matches(method, path):
                continue
            if fault.probability is not None and self.rng.random() >= fault.probability:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            fault.hits += 1
            fired.append(fault)
        self.faults = [f for f in self.faults if f.remaining is None or f.remaining > 0]
        return fired


class RateLimiter:
    """Token buckets keyed by session (real time, not the sandbox clock; `clock` is for simulations)."""

    def __init__(
        self, rate_per_second: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def configure(self, rate_per_second: float, burst: int) -> None:
        """New rate and burst for every session; buckets start full."""
        self.rate = rate_per_second
        self.burst = burst
        self.buckets.clear()

    def take(self, key: str) -> float | None:
        """Spend a token; return None if allowed, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return None
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0


def retry_after_seconds(wait: float) -> int:
    """The Retry-After a 429 carries: whole seconds, at least one (as HTTP-date-free servers send)."""
    return max(1, math.ceil(wait))


class PortalEdge:
    """ASGI middleware: request ids, rate limit, and fault injection in front of the portal."""

    def __init__(self, app: ASGIApp, sandbox: Any) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        trace_id = uuid.uuid4().hex
        scope.setdefault("state", {})["trace_id"] = trace_id
        is_api = path.startswith("/api")
        # The Date header tells clients the portal's time (as a real server's would); here that is
        # the sandbox clock, which is what TOTP codes and expiry are checked against.
        extra_headers = [
            (b"date", format_datetime(self.sandbox.state.now, usegmt=True).encode()),
            (b"x-plooto-id", trace_id.encode()),
        ]
        if is_api:
            extra_headers.append((b"x-via", b"api"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                message["headers"] = kept + extra_headers
            await send(message)

        if not path.startswith(PORTAL_PREFIXES):
            await self.app(scope, receive, send_with_headers)
            return
        request = Request(scope)
        session_token = request.cookies.get(SESSION_COOKIE)
        client = scope.get("client")
        key = session_token or (client[0] if client else "anonymous")
        wait = self.sandbox.limiter.take(key)
        if wait is not None:
            retry_after = str(retry_after_seconds(wait))
            await self._reply(
                send_with_headers,
                429,
                is_api,
                "RateLimitExceeded",
                "Too many requests.",
                trace_id,
                retry_after,
            )
            return
        fired = self.sandbox.faults.triggered(scope["method"], path)
        drop: Fault | None = None
        renames: dict[str, list[tuple[str, str]]] = {}
        for fault in fired:
            if fault.kind == "latency":
                await asyncio.sleep(fault.latency_ms / 1000)
            elif fault.kind == "error":
                code = "ServiceUnavailable" if fault.status == 503 else "InternalServerError"
                await self._reply(
                    send_with_headers,
                    fault.status,
                    is_api,
                    code,
                    "The service is temporarily unavailable.",
                    trace_id,
                )
                return
            elif fault.kind == "revoke_session" and session_token:
                self.sandbox.state.sessions.pop(session_token, None)
            elif fault.kind == "mfa_rechallenge" and session_token:
                session = self.sandbox.state.sessions.get(session_token)
                # Only a user who signs in with MFA is asked for it again: the portal has no MFA
                # step for the others.
                user = self.sandbox.state.users.get(session.user_id) if session is not None else None
                if session is not None and user is not None and user.mfa_method is not None:
                    session.mfa_pending = True
                    session.sms_code = None
            elif fault.kind == "shape_change" and fault.object_type and fault.from_field and fault.to_field:
                renames.setdefault(fault.object_type, []).append((fault.from_field, fault.to_field))
            elif fault.kind == "drop_response":
                drop = fault
        token = FIELD_RENAMES.set(renames or None)
        try:
            if drop is None:
                await self.app(scope, receive, send_with_headers)
            else:
                await self._apply_then_drop(scope, receive, send_with_headers, drop)
        finally:
            FIELD_RENAMES.reset(token)

    async def _apply_then_drop(self, scope: Scope, receive: Receive, send: Send, fault: Fault) -> None:
        """Run the request for real, then lose its response."""
        start: Message | None = None
        body = b""

        async def capture(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body += message.get("body", b"")

        await self.app(scope, receive, capture)
        if fault.mode == "502":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            await send(
                {
                    "type": "http.response.start",
                    "status": 502,
                    "headers": [
                        (b"content-type", b"text/html"),
                        (b"content-length", str(len(page)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": page})
            return
        # Promise the full body, deliver half, then return without finishing: the server closes
        # the connection and the client sees a truncated response, as when a proxy drops mid-flight.
        if start is None:
            return
        await send(start)
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})

    @staticmethod
    async def _reply(
        send: Send,
        status: int,
        is_api: bool,
        code: str,
        message: str,
        trace_id: str,
        retry_after: str | None = None,
    ) -> None:
        if is_api:
            payload = encode_portal_json(envelope(code, message, trace_id))
            content_type = b"application/json; charset=utf-8"
        else:
            payload = f'<html><body><h1>{status}</h1><p data-error-code="{code}">{message}</p></body></html>'.encode()
            content_type = b"text/html; charset=utf-8"
        headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
