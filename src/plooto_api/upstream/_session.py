"""PortalSession: one signed-in portal login, its cookies, throttle, retries, re-login and reads."""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
import pyotp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from plooto_api.upstream import portal
from plooto_api.upstream._convert import Context, clock_offset, loads, parse_timestamp, retry_after_seconds
from plooto_api.upstream._errors import (
    AccountLocked,
    AmbiguousWriteOutcome,
    InvalidCredentials,
    InvalidMfaCode,
    LoginBlocked,
    MfaRequired,
    NotFound,
    PermissionDenied,
    PortalRuleViolation,
    RateLimited,
    SessionExpired,
    SessionReplaced,
    TermsNotAccepted,
    UpstreamChanged,
    UpstreamError,
    UpstreamUnavailable,
)
from plooto_api.upstream._html import Page, parse_page
from plooto_api.upstream._models import (
    ChangePage,
    Credentials,
    MfaChallenge,
    SessionStateStore,
    SessionStats,
    ThrottleConfig,
    UpstreamRecord,
    UpstreamRef,
    WriteResult,
)
from plooto_api.upstream._shapes import check_shape
from plooto_api.upstream._throttle import AdaptiveThrottle, LoopStalls

log = structlog.get_logger("plooto_api.upstream")

STATE_VERSION = 1


class _Transient(Exception):
    """Internal: a retryable failure carrying the error to raise once retries are exhausted."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(str(error))
        self.error = error


class PortalSession:
    """One portal login (one connection): safe for concurrent use from one asyncio loop."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        state_store: SessionStateStore,
        *,
        throttle: ThrottleConfig | None = None,
        login_mode: Literal["http", "browser"] = "http",
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        portal_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._store = state_store
        self.throttle_config = throttle or ThrottleConfig()
        self.throttle = AdaptiveThrottle(self.throttle_config)
        self.login_mode = login_mode
        self.stats = SessionStats()
        # The portal's clock when it is not this machine's (the sandbox's moves only when told to).
        self._portal_clock = portal_clock
        # Asked before every sign-in that no person asked for (a re-login after the session expired,
        # a sign-in for a sync, a read or a write): why not to, or None. See LoginBlocked.
        self.login_guard: Callable[[], Awaitable[str | None]] | None = None
        self._clock_offset: float | None = None  # portal time - local time, seconds
        self.mfa_method: str | None = None  # how the portal asks this login for codes (totp, sms), once known
        self._clock_from_date = False
        self.write_timeout = timeout  # seconds a write may take before its outcome is ambiguous
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            follow_redirects=False,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "Mozilla/5.0 (plooto-api gateway)", "Accept-Language": "en-CA"},
        )
        self._login_lock = asyncio.Lock()
        self._generation = 0  # bumps on every completed sign-in
        # Sign-in attempts started, and the last one's failure with its number: callers that waited
        # for an attempt share its failure rather than each trying again (see _failed_since).
        self._attempts = 0
        self._failure: tuple[int, UpstreamError] | None = None
        self._ready = False
        self._restored = False
        self._pending_mfa: MfaChallenge | None = None
        # The portal asks for new terms of service (see _terms_pending): until a sign-in succeeds,
        # even checking the saved session waits for the login guard.
        self._terms_pending = False
        self._saved_snapshot: tuple[Any, ...] | None = None
        self._saved_throttle: dict[str, float | None] | None = None
        self._detached = False  # closed without saving: its state is no longer this connection's
        self._retired = False  # its credentials were replaced: it signs in no more (see retire)
        self.last_used = time.monotonic()  # when its last request ended

    def __repr__(self) -> str:
        return f"PortalSession(base_url={self.base_url!r}, username={self._credentials.username!r})"

    # -- persisted state -----------------------------------------------------------------------

    def _cookie_list(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "value": c.value,
                "domain": c.domain,
                "path": c.path,
                "expires": c.expires,
                "secure": c.secure,
            }
            for c in self._client.cookies.jar
        ]

    def _snapshot(self) -> tuple[Any, ...]:
        cookies = tuple(sorted((c["name"], c["value"], c["domain"], c["path"]) for c in self._cookie_list()))
        pending = self._pending_mfa.method if self._pending_mfa else None
        return (cookies, pending, self.mfa_method)

    def _persist(self, *, force: bool = False) -> None:
        if self._detached:
            return
        snapshot = self._snapshot()
        if not force and snapshot == self._saved_snapshot:
            return
        # Another process of this connection may have saved a newer trusted device since this one
        # restored the state: keep it rather than save an older one (or none) over it.
        self._take_newer_device(self._store.load())
        snapshot = self._snapshot()
        learned = self.throttle.learned()
        state = {
            "version": STATE_VERSION,
            "username": self._credentials.username,
            "cookies": self._cookie_list(),
            "pending_mfa": {"method": self._pending_mfa.method, "detail": self._pending_mfa.detail}
            if self._pending_mfa
            else None,
            "clock_offset": self._clock_offset,
            "mfa_method": self.mfa_method,
            "throttle": learned,
            "saved_at": datetime.now(UTC).isoformat(),
        }
        self._store.save(state)
        self._saved_snapshot = snapshot
        self._saved_throttle = learned

    def _restore(self) -> None:
        if self._restored:
            return
        self._restored = True
        state = self._store.load()
        if state is None or not self._is_this_login(state):
            return
        for item in state.get("cookies", []):
            self._set_cookie(
                item["name"],
                item["value"],
                item["domain"],
                item.get("path") or "/",
                item.get("expires"),
                item.get("secure", False),
            )
        pending = state.get("pending_mfa")
        if pending:
            self._pending_mfa = MfaChallenge(pending["method"], pending.get("detail"))
        if isinstance(state.get("clock_offset"), int | float):
            self._clock_offset = float(state["clock_offset"])
        if isinstance(state.get("mfa_method"), str):
            self.mfa_method = state["mfa_method"]
        throttle = state.get("throttle")
        self._saved_throttle = throttle if isinstance(throttle, dict) else None
        self.throttle.resume(self._saved_throttle)
        self._saved_snapshot = self._snapshot()

    def _is_this_login(self, state: dict[str, Any]) -> bool:
        """Whether a saved state is this session's kind and login (not another username's)."""
        return state.get("version") == STATE_VERSION and state.get("username") == self._credentials.username

    def _device_cookie(self) -> http.cookiejar.Cookie | None:
        """The trusted-device cookie in the jar (the longest-lasting, should there be two)."""
        devices = [c for c in self._client.cookies.jar if c.name == portal.TRUSTED_DEVICE_COOKIE]
        return max(devices, key=lambda c: c.expires or 0, default=None)

    def adopt_trusted_device(self, state: dict[str, Any] | None) -> None:
        """Sign in as the device a saved state of this login trusts (its trusted-device cookie, none
        of its session): new credentials a person gives a connection they manage, proven on a
        session of their own, then need no MFA code where the connection needed none."""
        self._take_newer_device(state)

    def _take_newer_device(self, state: dict[str, Any] | None) -> None:
        """Adopt the saved state's trusted-device cookie when it was issued after this session's own.

        Another process of the connection (`plooto-api sync --mfa-code` beside a running gateway) may
        have answered an MFA step since this session restored the state (`_restore` reads it once).
        Saving this session's jar over that cookie, or signing in without it, has the portal ask
        for a code again. The portal gives every device cookie the same lifetime, so the one issued
        later is the one that expires later; one already expired is no use to take."""
        if state is None or not self._is_this_login(state):
            return
        saved = [
            item
            for item in state.get("cookies") or []
            if isinstance(item, dict)
            and item.get("name") == portal.TRUSTED_DEVICE_COOKIE
            and isinstance(item.get("value"), str)
            and isinstance(item.get("domain"), str)
        ]
        newest = max(saved, key=lambda item: item.get("expires") or 0, default=None)
        if newest is None:
            return
        expires = newest.get("expires")
        if isinstance(expires, int | float) and expires <= time.time():
            return
        mine = self._device_cookie()
        if mine is not None and (mine.value == newest["value"] or (mine.expires or 0) >= (expires or 0)):
            return
        self._drop_cookies(portal.TRUSTED_DEVICE_COOKIE)
        self._set_cookie(
            newest["name"],
            newest["value"],
            newest["domain"],
            newest.get("path") or "/",
            int(expires) if isinstance(expires, int | float) else None,
            bool(newest.get("secure", False)),
        )
        log.info("portal.trusted_device_taken", username=self._credentials.username)

    def _set_cookie(
        self, name: str, value: str, domain: str, path: str, expires: int | None, secure: bool
    ) -> None:
        dotted = domain.startswith(".")
        self._client.cookies.jar.set_cookie(
            http.cookiejar.Cookie(
                0, name, value, None, False, domain, dotted, dotted, path, True, secure, expires,
                expires is None, None, None, {},
            )
        )  # fmt: skip

    def _cookie(self, name: str) -> str | None:
        for cookie in self._client.cookies.jar:
            if cookie.name == name:
                return cookie.value
        return None

    def _drop_cookies(self, *names: str) -> None:
        for cookie in list(self._client.cookies.jar):
            if cookie.name in names:
                self._client.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)

    def export_cookies(self) -> list[dict[str, Any]]:
        """The session's cookies (for handing over to another client); secrets — never log them."""
        return self._cookie_list()

    def import_cookies(self, cookies: list[dict[str, Any]]) -> None:
        """Adopt cookies obtained elsewhere (e.g. the real-browser login)."""
        for c in cookies:
            self._set_cookie(
                c["name"],
                c["value"],
                c["domain"],
                c.get("path") or "/",
                c.get("expires"),
                c.get("secure", False),
            )
        self._persist()

    # -- portal clock (TOTP) -------------------------------------------------------------------

    async def read_portal_clock(self) -> datetime:
        """The portal's time now, read from the Date header of its login page (a GET that signs no
        one in): the sandbox's clock moves only when told to, and a lock ends by the portal's clock."""
        if self._portal_clock is None:
            await self._request("GET", portal.LOGIN_PATH)
        return self.portal_now()

    def portal_now(self) -> datetime:
        """Best knowledge of the portal's current time."""
        if self._portal_clock is not None:
            return self._portal_clock()
        return datetime.fromtimestamp(time.time() + (self._clock_offset or 0.0), UTC)

    def _note_date_header(self, response: httpx.Response) -> None:
        # Every response's Date header is the server's clock: keep the offset current (TOTP codes
        # are computed for the portal's time, which may drift from ours, or be simulated).
        offset = clock_offset(response.headers.get("date"))
        if offset is not None:
            self._clock_offset = offset
            self._clock_from_date = True

    def _note_session(self, body: Any) -> None:
        """The portal's account of the session: the login's MFA method, and, without Date headers,
        the portal's clock (`idleExpiresAt` is portal now + the idle timeout)."""
        raw = body.get(portal.SESSION_MFA_METHOD) if isinstance(body, dict) else None
        if isinstance(raw, str) and raw in portal.MFA_METHODS:
            self.mfa_method = portal.MFA_METHODS[raw]
        if self._clock_from_date:
            return
        expires = parse_timestamp(body.get(portal.SESSION_IDLE_EXPIRES)) if isinstance(body, dict) else None
        if expires is not None:
            self._clock_offset = expires.timestamp() - portal.SESSION_IDLE_TIMEOUT_SECONDS - time.time()

    # -- one HTTP exchange ---------------------------------------------------------------------

    def _api_headers(self) -> dict[str, str]:
        """What every call of the portal's JSON endpoints carries: JSON wanted, and the CSRF token."""
        headers = {"Accept": "application/json"}
        xsrf = self._cookie(portal.XSRF_COOKIE)
        if xsrf:
            headers[portal.XSRF_HEADER] = xsrf
        return headers

    async def _exchange(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        transport_error: Callable[[httpx.TransportError], Exception],
    ) -> tuple[httpx.Response, float]:
        """One request in a throttle slot: the response and the portal's latency. A transport error
        (timeouts included) breaks the throttle's healthy run and is raised as `transport_error` says."""
        stalls = LoopStalls.of_running_loop()
        async with self.throttle.slot():
            self.stats.requests += 1
            started = stalls.start()
            try:
                response = await send()
            except httpx.TransportError as exc:
                self.throttle.on_failure()
                raise transport_error(exc) from exc
            finally:
                # What the portal took, not what this process's busy loop added to it.
                latency = stalls.finish(started)
        self.last_used = time.monotonic()
        self._note_date_header(response)
        self._persist()
        return response, latency

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        api: bool = False,
    ) -> httpx.Response:
        headers = self._api_headers() if api else {}

        def transient(exc: httpx.TransportError) -> Exception:
            if isinstance(exc, httpx.TimeoutException):
                return _Transient(UpstreamUnavailable(f"the portal timed out ({method} {path})"))
            return _Transient(UpstreamUnavailable(f"could not reach the portal: {type(exc).__name__}"))

        response, latency = await self._exchange(
            lambda: self._client.request(method, path, params=params, data=data, headers=headers), transient
        )
        if response.status_code == 429:
            self.stats.responses_429 += 1
            retry_after = _retry_after(response)
            self.throttle.on_rate_limited(retry_after)
            raise _Transient(RateLimited(retry_after=retry_after))
        if response.status_code >= 500:
            self.throttle.on_failure()
            raise _Transient(
                UpstreamUnavailable(
                    f"the portal answered {response.status_code} ({method} {path})",
                    status_code=response.status_code,
                )
            )
        self.throttle.on_response(latency)
        return response

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        cfg = self.throttle_config
        if isinstance(error, _Transient) and isinstance(error.error, RateLimited):
            # The throttle already holds every start until Retry-After; add jitter only.
            return random.uniform(0, cfg.backoff_base)
        exp = min(cfg.backoff_max, cfg.backoff_base * 2 ** (state.attempt_number - 1))
        return random.uniform(0, exp)

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        api: bool = False,
        rate_limit_only: bool = False,
    ) -> httpx.Response:
        """`_send` with jittered exponential retries (only 429 for non-idempotent form posts)."""

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Transient) and (not rate_limit_only or isinstance(exc.error, RateLimited))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.throttle_config.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(retryable),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(method, path, params=params, data=data, api=api)
        except _Transient as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- HTML login ----------------------------------------------------------------------------

    async def _get_page(self, path: str) -> tuple[httpx.Response, Page]:
        response = await self._request("GET", path)
        return response, parse_page(response.text) if response.status_code == 200 else Page({}, {})

    @staticmethod
    def _location(response: httpx.Response) -> str:
        return httpx.URL(response.headers.get("location", "")).path

    def _signed_in(self) -> None:
        self._ready = True
        self._terms_pending = False
        self._pending_mfa = None
        self._generation += 1
        self._persist(force=True)

    def _terms_not_accepted(self) -> TermsNotAccepted:
        """The portal published terms of service the user has not accepted (its login landed on
        its terms page, or its API answered 403 TermsNotAccepted). They are a legal agreement: only
        the person accepts them, in the portal; nothing here ever posts the terms form. The session
        stays (its cookies work again once they are accepted), but is not ready."""
        self._ready = False
        self._terms_pending = True
        self._persist(force=True)
        log.info("portal.terms_not_accepted", username=self._credentials.username)
        return TermsNotAccepted(
            "the portal has new terms of service: the user must sign in to the portal and accept them "
            "(the gateway never accepts them for the user)",
            at=self.portal_now().replace(microsecond=0),  # Date headers tell whole seconds only
        )

    async def _check_login_guard(self, *, deliberate: bool) -> None:
        """LoginBlocked when the login guard says no sign-in may be tried now, unless a person asked
        for this one (`deliberate`). SessionReplaced on a retired session, whatever the caller."""
        if self._retired:
            raise SessionReplaced()
        reason = None if deliberate or self.login_guard is None else await self.login_guard()
        if reason is not None:
            raise LoginBlocked(f"not signing in to the portal: {reason}")

    async def _login(self) -> None:
        """Sign in with username/password (never retried on refusal), then MFA if asked."""
        # With the newest trusted device saved, whichever process of this connection earned it.
        self._take_newer_device(self._store.load())
        if self.login_mode == "browser":
            from plooto_api.upstream.browser import browser_login

            self.stats.logins += 1
            self._drop_cookies(portal.SESSION_COOKIE, portal.XSRF_COOKIE)
            try:
                cookies = await browser_login(
                    self.base_url, self._credentials, self.portal_now, self._cookie_list(),
                    learn_clock=self._portal_clock is None,  # a clock given is the one to use
                )  # fmt: skip
            except MfaRequired as exc:
                # Park the browser's pending login in the HTTP client: submit_mfa_code finishes it.
                self.import_cookies(getattr(exc, "cookies", []))
                self._ready = False
                self._pending_mfa = exc.challenge
                self._persist(force=True)
                raise
            except TermsNotAccepted as exc:
                self.import_cookies(getattr(exc, "cookies", []))  # signed in, once they are accepted
                raise self._terms_not_accepted() from None
            self.import_cookies(cookies)
            await self._after_sign_in_check()
            log.info("portal.signed_in", username=self._credentials.username, mode="browser")
            return
        for _token_attempt in range(2):
            self._drop_cookies(portal.SESSION_COOKIE, portal.XSRF_COOKIE)
            response, page = await self._get_page(portal.LOGIN_PATH)
            form = page.forms.get(portal.LOGIN_FORM.form_id)
            if (
                response.status_code != 200
                or form is None
                or portal.LOGIN_FORM.token_field not in form.inputs
            ):
                raise UpstreamChanged(
                    "login",
                    [f"login: form '{portal.LOGIN_FORM.form_id}' not found (HTTP {response.status_code})"],
                )
            self.stats.logins += 1
            response = await self._request(
                "POST",
                portal.LOGIN_PATH,
                data={
                    portal.LOGIN_USER_FIELD: self._credentials.username,
                    portal.LOGIN_PASSWORD_FIELD: self._credentials.password,
                    portal.LOGIN_FORM.token_field: form.inputs[portal.LOGIN_FORM.token_field],
                },
                rate_limit_only=True,
            )
            if response.status_code in (302, 303):
                if self._location(response).startswith(portal.MFA_PATH):
                    await self._complete_mfa()
                elif self._location(response).startswith(portal.TERMS_PATH):
                    raise self._terms_not_accepted()
                else:
                    self._signed_in()
                log.info("portal.signed_in", username=self._credentials.username, mode="http")
                return
            code = parse_page(response.text).marker(portal.ERROR_CODE_ATTR)
            if code == portal.LOGIN_ERROR_TOKEN:
                continue  # the form token was refused before the password was checked: safe to redo
            self._raise_login_error(response, code)
        raise UpstreamChanged("login", ["login: the portal refused its own anti-forgery token twice"])

    def _raise_login_error(self, response: httpx.Response, code: str | None) -> None:
        if code == portal.LOGIN_ERROR_LOCKED or response.status_code == 423:
            until = parse_timestamp(parse_page(response.text).marker(portal.LOCKED_UNTIL_ATTR))
            raise AccountLocked(
                "the portal has temporarily locked this account", until=until, at=self.portal_now()
            )
        if code == portal.LOGIN_ERROR_INVALID_CREDENTIALS or response.status_code == 401:
            raise InvalidCredentials("the portal refused the username or password")
        raise UpstreamChanged("login", [f"login: unexpected answer HTTP {response.status_code} ({code})"])

    async def _after_sign_in_check(self) -> None:
        response = await self._request("GET", portal.SESSION_PATH, api=True)
        if response.status_code == 200:
            self._note_session(self._json(response, "session"))
            self._signed_in()
            return
        if self._error_code(response) == portal.ERROR_MFA_REQUIRED:
            await self._complete_mfa()
            return
        if self._error_code(response) == portal.ERROR_TERMS_NOT_ACCEPTED:
            raise self._terms_not_accepted()
        raise SessionExpired("the portal did not accept the new session")

    async def _mfa_form(self) -> tuple[MfaChallenge, str]:
        """The MFA page's challenge and form token; SessionExpired if there is no pending login."""
        response, page = await self._get_page(portal.MFA_PATH)
        if response.status_code in (302, 303):
            if self._location(response).startswith(portal.LOGIN_PATH):
                self._pending_mfa = None
                self._persist(force=True)
                raise SessionExpired("the pending portal login is gone; sign in again")
            if self._location(response).startswith(portal.TERMS_PATH):
                raise self._terms_not_accepted()
            raise _AlreadySignedIn
        form = page.forms.get(portal.MFA_FORM.form_id)
        if form is None or portal.MFA_FORM.token_field not in form.inputs:
            raise UpstreamChanged(
                "mfa", [f"mfa: form '{portal.MFA_FORM.form_id}' not found (HTTP {response.status_code})"]
            )
        method_raw = form.attrs.get(portal.MFA_METHOD_ATTR, "")
        method = portal.MFA_METHODS.get(method_raw)
        if method not in ("totp", "sms"):
            raise UpstreamChanged("mfa", [f"mfa: unknown method {method_raw!r}"])
        self.mfa_method = method
        return MfaChallenge(method), form.inputs[portal.MFA_FORM.token_field]  # type: ignore[arg-type]

    async def _complete_mfa(self) -> None:
        """Answer the MFA step with the TOTP secret, or park the login and raise MfaRequired."""
        try:
            challenge, token = await self._mfa_form()
        except _AlreadySignedIn:
            self._signed_in()
            return
        if challenge.method == "totp" and self._credentials.totp_secret:
            at = self.portal_now()
            code = pyotp.TOTP(self._credentials.totp_secret).at(at)
            try:
                await self._submit_mfa(token, code, trust_device=True)
            except InvalidMfaCode as exc:
                # Usually a wrong secret, or a portal clock unlike ours (pass `portal_clock`).
                raise InvalidMfaCode(
                    f"the portal refused the TOTP code computed for {at:%Y-%m-%dT%H:%M:%SZ}"
                ) from exc
            return
        self._ready = False
        self._pending_mfa = challenge
        self._persist(force=True)
        raise MfaRequired(challenge)

    async def resend_mfa_code(self) -> MfaChallenge | None:
        """Have the portal send a new code for the sign-in waiting for one (SMS), as its MFA page's
        "send a new code" does: the challenge it answers, or None when this session turns out to be
        signed in. SessionExpired when no sign-in waits (a new one sends a code by itself)."""
        async with self._login_lock:
            self._restore()
            try:
                challenge, token = await self._mfa_form()
            except _AlreadySignedIn:
                self._signed_in()
                return None
            data = {portal.MFA_FORM.token_field: token}
            response = await self._request("POST", portal.MFA_RESEND_PATH, data=data, rate_limit_only=True)
            if response.status_code not in (302, 303):
                raise UpstreamChanged("mfa", [f"mfa: resend answered HTTP {response.status_code}"])
            if self._location(response).startswith(portal.LOGIN_PATH):
                raise SessionExpired("the pending portal login is gone; sign in again")
            self._pending_mfa = challenge
            self._persist(force=True)
            return challenge

    async def _submit_mfa(self, token: str, code: str, *, trust_device: bool) -> None:
        data = {portal.MFA_CODE_FIELD: code, portal.MFA_FORM.token_field: token}
        if trust_device:
            data[portal.MFA_TRUST_FIELD] = portal.MFA_TRUST_VALUE
        response = await self._request("POST", portal.MFA_PATH, data=data, rate_limit_only=True)
        if response.status_code in (302, 303):
            if self._location(response).startswith(portal.LOGIN_PATH):
                raise SessionExpired("the pending portal login is gone; sign in again")
            self.stats.mfa_answers += 1
            if self._location(response).startswith(portal.TERMS_PATH):
                raise self._terms_not_accepted()
            self._signed_in()
            return
        page = parse_page(response.text)
        error = page.marker(portal.ERROR_CODE_ATTR)
        if error == portal.LOGIN_ERROR_LOCKED or response.status_code == 423:
            until = parse_timestamp(page.marker(portal.LOCKED_UNTIL_ATTR))
            raise AccountLocked(
                "the portal locked this account after failed verification codes",
                until=until,
                at=self.portal_now(),
            )
        if error == portal.MFA_ERROR_INVALID_CODE or response.status_code == 401:
            raise InvalidMfaCode("the portal refused the verification code")
        raise UpstreamChanged("mfa", [f"mfa: unexpected answer HTTP {response.status_code} ({error})"])

    # -- public: sign-in -----------------------------------------------------------------------

    async def ensure_logged_in(self, *, deliberate: bool = False, new_code: bool = False) -> None:
        """Restore saved state; if the portal session is not valid any more, sign in again.
        `deliberate`: a person asked for this sign-in (new credentials, a code), so the login guard
        does not stop it (its callers check the portal's lock themselves: a person lifts a refused
        password or an awaited code, never a lock). `new_code`: that person has no code for a saved
        sign-in waiting for one the gateway cannot produce (SMS): it is started afresh, so the
        portal sends a new code (re-reading the MFA page sends none)."""
        if self._ready:
            return
        attempts = self._attempts
        async with self._login_lock:
            if self._ready:
                return
            if not deliberate:
                self._failed_since(attempts)
            if self._terms_pending:  # even asking the portal again waits for the guard's time
                await self._check_login_guard(deliberate=deliberate)
            self._restore()
            if self._cookie(portal.SESSION_COOKIE):
                response = await self._request("GET", portal.SESSION_PATH, api=True)
                if response.status_code == 200:
                    self._note_session(self._json(response, "session"))
                    self._signed_in()
                    return
                code = self._error_code(response)
                # Without a TOTP secret, only a person has the code; one who has none needs a new one.
                restart = new_code and not self._credentials.totp_secret
                if code == portal.ERROR_MFA_REQUIRED and not restart:
                    await self._check_login_guard(deliberate=deliberate)
                    try:
                        await self._attempt(self._complete_mfa)
                        return
                    except SessionExpired:
                        pass
                elif code == portal.ERROR_XSRF_INVALID:
                    await self._refresh_xsrf()
                    self._signed_in()
                    return
                elif code == portal.ERROR_TERMS_NOT_ACCEPTED:  # signed in, but not to be used yet
                    raise self._terms_not_accepted()
            await self._check_login_guard(deliberate=deliberate)
            await self._attempt(self._login)

    async def _attempt(self, step: Callable[[], Awaitable[None]]) -> None:
        """One sign-in attempt (`_login`, or `_complete_mfa` of a sign-in under way); a failure is
        kept for the callers that waited for it (an MFA step's expiry is not: a login follows)."""
        self._attempts += 1
        number = self._attempts
        try:
            await step()
        except SessionExpired:
            raise
        except UpstreamError as exc:
            self._failure = (number, exc)
            raise

    def _failed_since(self, attempts: int) -> None:
        """Raise the failure of a sign-in attempted since the caller saw `attempts` (it waited for
        the lock meanwhile). Each company of a sync waits for the same sign-in: with a refused
        password, every one tried again after it, and one run locked the account."""
        if self._failure is not None and self._failure[0] > attempts:
            raise self._failure[1]

    async def submit_mfa_code(self, code: str, *, trust_device: bool = True) -> None:
        """Answer a pending MFA challenge (e.g. the SMS code), also from a new session after a restart."""
        async with self._login_lock:
            self._restore()
            try:
                _challenge, token = await self._mfa_form()
            except _AlreadySignedIn:
                self._signed_in()
                return
            await self._submit_mfa(token, code.strip(), trust_device=trust_device)

    async def keep_alive(self) -> None:
        """A cheap authenticated request that restarts the portal's idle timer."""
        body = await self._api_get(portal.SESSION_PATH, object_type="session")
        self._note_session(body)

    @property
    def pending_mfa(self) -> MfaChallenge | None:
        return self._pending_mfa

    async def _refresh_xsrf(self) -> None:
        self.stats.xsrf_refreshes += 1
        response = await self._request("GET", portal.ANTIFORGERY_PATH, api=True)
        if response.status_code != 200:
            raise SessionExpired("the portal would not issue an anti-forgery token")
        token = self._json(response, "antiforgery").get("requestToken")
        if isinstance(token, str) and self._cookie(portal.XSRF_COOKIE) != token:
            self._drop_cookies(portal.XSRF_COOKIE)
            self._set_cookie(portal.XSRF_COOKIE, token, httpx.URL(self.base_url).host, "/", None, False)
        self._persist()

    async def _relogin(self, generation: int, attempts: int, *, mfa_only: bool) -> None:
        """Sign in again unless another request already did since `generation`, or tried and
        failed since `attempts` (that failure is raised: the caller's request was sent before it)."""
        async with self._login_lock:
            if self._generation != generation:
                return
            self._failed_since(attempts)
            await self._check_login_guard(deliberate=False)
            self.stats.relogins += 1
            self._ready = False
            log.info("portal.session_lost", username=self._credentials.username, mfa_only=mfa_only)
            if mfa_only:
                try:
                    await self._attempt(self._complete_mfa)
                    return
                except SessionExpired:
                    pass
            await self._attempt(self._login)

    # -- JSON API ------------------------------------------------------------------------------

    @staticmethod
    def _error_body(response: httpx.Response) -> dict[str, Any]:
        try:
            body = loads(response.content)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _error_code(self, response: httpx.Response) -> str | None:
        code = self._error_body(response).get(portal.ERROR_CODE_FIELD)
        return code if isinstance(code, str) else None

    @staticmethod
    def _json(response: httpx.Response, object_type: str) -> Any:
        try:
            return loads(response.content)
        except ValueError:
            ctype = response.headers.get("content-type", "?")
            raise UpstreamChanged(object_type, [f"{object_type}: response is not JSON ({ctype})"]) from None

    async def _api_get(self, path: str, params: dict[str, Any] | None = None, *, object_type: str) -> Any:
        """GET an /api path: re-login once on 401, refresh XSRF once on 403, map errors."""
        await self.ensure_logged_in()
        relogged = xsrf_refreshed = False
        while True:
            generation, attempts = self._generation, self._attempts
            response = await self._request("GET", path, params=params, api=True)
            if response.status_code == 200:
                return self._json(response, object_type)
            body = self._error_body(response)
            code = body.get(portal.ERROR_CODE_FIELD)
            message = str(body.get(portal.ERROR_MESSAGE_FIELD) or f"HTTP {response.status_code}")
            if response.status_code == 401:
                if relogged:
                    raise SessionExpired("the portal session was lost again right after signing in")
                relogged = True
                await self._relogin(generation, attempts, mfa_only=code == portal.ERROR_MFA_REQUIRED)
                continue
            if response.status_code == 403 and code == portal.ERROR_TERMS_NOT_ACCEPTED:
                raise self._terms_not_accepted()  # signing in again would land on the same terms
            if response.status_code == 403 and code == portal.ERROR_XSRF_INVALID:
                if xsrf_refreshed:
                    raise SessionExpired("the portal refused a fresh anti-forgery token")
                xsrf_refreshed = True
                await self._refresh_xsrf()
                continue
            if response.status_code == 403:
                raise PermissionDenied(message)
            if response.status_code == 404:
                raise NotFound(message, code=str(code) if code else None)
            if 400 <= response.status_code < 500:
                errors = body.get(portal.ERROR_VALIDATION_FIELD) or [{}]
                field = errors[0].get("field") if isinstance(errors[0], dict) else None
                raise PortalRuleViolation(
                    str(code or response.status_code), message, field=field, status_code=response.status_code
                )
            raise UpstreamError(f"unexpected portal answer HTTP {response.status_code}")

    def _context(self, company_id: str) -> Context:
        return Context(company_id, self.base_url, datetime.now(UTC))

    async def _page(self, path: str, params: dict[str, Any], *, object_type: str) -> dict[str, Any]:
        body = await self._api_get(path, params, object_type=object_type)
        check_shape(portal.PAGE, body, object_type=object_type)
        return dict(body)

    async def list_companies(self) -> list[UpstreamRecord]:
        """Every company (client book) the login can reach."""
        records: list[UpstreamRecord] = []
        page_number = 1
        while True:
            params = {portal.PAGE_NUMBER_PARAM: page_number, portal.PAGE_SIZE_PARAM: portal.MAX_PAGE_SIZE}
            body = await self._page(portal.COMPANIES_PATH, params, object_type="company")
            ctx = self._context("")
            for item in body[portal.PAGE_ITEMS]:
                check_shape(portal.COMPANY, item, object_type="company")
                records.extend(portal.normalize_company(item, ctx))
            if page_number >= body[portal.PAGE_TOTAL_PAGES]:
                return records
            page_number += 1

    async def list_changes(
        self,
        company_upstream_id: str,
        feed: str,
        *,
        modified_since: datetime | None,
        page_number: int = 1,
        page_size: int = 200,
    ) -> ChangePage:
        """One page of a feed, oldest change first; `modified_since` is inclusive (de-duplicate by id)."""
        collection = portal.FEED_COLLECTIONS.get(feed)
        declared = next((f for f in portal.FEEDS if f.name == feed), None)
        if collection is None or declared is None:
            raise ValueError(f"unknown feed {feed!r}")
        params: dict[str, Any] = {
            portal.PAGE_NUMBER_PARAM: page_number,
            portal.PAGE_SIZE_PARAM: max(1, min(page_size, portal.MAX_PAGE_SIZE)),
        }
        if declared.incremental and modified_since is not None:
            params[portal.MODIFIED_SINCE_PARAM] = portal.timestamp_param(modified_since)
        ctx = self._context(company_upstream_id)
        if not collection.paged:  # the company's own object, read whole: one page
            raw = await self._api_get(
                portal.COMPANY_PATH.format(company=company_upstream_id), object_type=collection.object_type
            )
            check_shape(collection.shape, raw, object_type=collection.object_type)
            whole = collection.normalize(raw, ctx)
            return ChangePage(records=whole, page_number=1, total_pages=1, total_count=len(whole))
        path = f"{portal.COMPANY_PATH.format(company=company_upstream_id)}/{collection.path}"
        body = await self._page(path, params, object_type=collection.object_type)
        records: list[UpstreamRecord] = []
        for item in body[portal.PAGE_ITEMS]:
            check_shape(collection.shape, item, object_type=collection.object_type)
            records.extend(collection.normalize(item, ctx))
        return ChangePage(
            records=records,
            page_number=body[portal.PAGE_NUMBER],
            total_pages=body[portal.PAGE_TOTAL_PAGES],
            total_count=body[portal.PAGE_TOTAL_COUNT],
        )

    async def own_user_ref(self, company_upstream_id: str) -> UpstreamRef:
        """The signed-in user, as a company's objects refer to them (an approval step's approver):
        whether a decision the portal reports is this login's own."""
        body = await self._api_get(portal.SESSION_PATH, object_type="session")
        check_shape(portal.SESSION, body, object_type="session")
        ref = portal.user_ref(self._context(company_upstream_id), body["userId"])
        assert ref is not None
        return ref

    async def fetch_object(
        self, company_upstream_id: str, object_type: str, upstream_id: str
    ) -> UpstreamRecord | None:
        """One object as it is now; None only when the portal confirms it does not exist, or that
        this login cannot reach its company any more (gone for this login)."""
        if object_type == "company":
            try:
                body = await self._api_get(
                    portal.COMPANY_PATH.format(company=upstream_id), object_type="company"
                )
            except NotFound as exc:
                if exc.code in portal.ERROR_NOT_FOUND:
                    return None
                raise
            check_shape(portal.COMPANY_PAGE, body, object_type="company")
            return portal.normalize_company(body, self._context(upstream_id))[0]
        source = portal.OBJECT_SOURCES.get(object_type)
        if source is None:
            raise ValueError(f"{object_type!r} objects are not fetched on their own")
        portal_id = source.portal_id(upstream_id)
        base = portal.COMPANY_PATH.format(company=company_upstream_id)
        ctx = self._context(company_upstream_id)
        for collection in source.collections:
            raw: Any = None
            try:
                if not collection.paged:
                    raw = await self._api_get(base, object_type=collection.object_type)
                elif collection.has_detail:
                    raw = await self._api_get(
                        f"{base}/{collection.path}/{portal_id}", object_type=collection.object_type
                    )
                else:
                    raw = await self._find_in_listing(f"{base}/{collection.path}", collection, portal_id)
            except NotFound as exc:
                if exc.code == portal.ERROR_COMPANY_NOT_FOUND:
                    return None  # the login cannot reach the object's company any more
                if exc.code != portal.ERROR_OBJECT_NOT_FOUND or not collection.has_detail:
                    raise
            if raw is None:
                continue
            check_shape(collection.shape, raw, object_type=collection.object_type)
            for record in collection.normalize(raw, ctx):
                if record.object_type == object_type and record.upstream_id == upstream_id:
                    return record
        return None

    async def _find_in_listing(
        self, path: str, collection: portal.Collection, portal_id: str
    ) -> dict[str, Any] | None:
        page_number = 1
        while True:
            params = {portal.PAGE_NUMBER_PARAM: page_number, portal.PAGE_SIZE_PARAM: portal.MAX_PAGE_SIZE}
            body = await self._page(path, params, object_type=collection.object_type)
            for item in body[portal.PAGE_ITEMS]:
                if isinstance(item, dict) and item.get(collection.id_field) == portal_id:
                    return item
            if page_number >= body[portal.PAGE_TOTAL_PAGES]:
                return None
            page_number += 1

    # -- JSON API: writes ----------------------------------------------------------------------
    # A write is sent once. It is sent again only when the portal provably did not apply it: a 429
    # (the rate limiter answers before the request is handled), a 401 (no session, nothing ran), a
    # refused anti-forgery token, a connection that could not be opened. Anything else that leaves
    # the outcome unknown raises AmbiguousWriteOutcome; the caller reads back by the reference it
    # wrote into the object before it decides to send again.

    def portal_today(self) -> date:
        """The portal's business date (debit dates are days in its time zone)."""
        return self.portal_now().astimezone(ZoneInfo(portal.BUSINESS_TIME_ZONE)).date()

    def known_today(self) -> date:
        """The portal's business date by what is known of its clock without asking it: this
        session's last answer, else the saved state's (a session this process has not used yet),
        else this machine's clock. Reads the saved state once (a short read of the store)."""
        self._restore()
        return self.portal_today()

    async def _send_write(
        self, method: str, path: str, *, json_body: Any, files: dict[str, Any] | None
    ) -> httpx.Response:
        headers = self._api_headers()

        def outcome(exc: httpx.TransportError) -> Exception:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                # The request never left: nothing can have been applied.
                return UpstreamUnavailable(f"could not reach the portal: {type(exc).__name__}")
            if isinstance(exc, httpx.TimeoutException):
                return AmbiguousWriteOutcome(
                    f"the portal did not answer {method} {path} within {self.write_timeout:g}s", settled=False
                )
            return AmbiguousWriteOutcome(
                f"the connection broke during {method} {path} ({type(exc).__name__})", settled=False
            )

        response, latency = await self._exchange(
            lambda: self._client.request(
                method, path, json=json_body, files=files, headers=headers, timeout=self.write_timeout
            ),
            outcome,
        )
        if response.status_code < 500 and response.status_code != 429:
            self.throttle.on_response(latency)
        return response

    async def _api_write(
        self,
        method: str,
        path: str,
        *,
        object_type: str,
        json_body: Any = None,
        files: dict[str, Any] | None = None,
    ) -> tuple[Any, httpx.Response]:
        """Send one write; returns the JSON answer and the response (status, trace id). An error
        raised before the portal could have applied it says so (`nothing_applied`)."""
        async with _nothing_applied():
            await self.ensure_logged_in()
        relogged = xsrf_refreshed = False
        rate_limited = 0
        while True:
            generation, attempts = self._generation, self._attempts
            response = await self._send_write(method, path, json_body=json_body, files=files)
            status = response.status_code
            trace_id = response.headers.get(portal.TRACE_HEADER)
            if 200 <= status < 300:
                return self._json(response, object_type), response
            body = self._error_body(response)
            code = body.get(portal.ERROR_CODE_FIELD)
            message = str(body.get(portal.ERROR_MESSAGE_FIELD) or f"HTTP {status}")
            if status == 429:
                self.stats.responses_429 += 1
                retry_after = _retry_after(response)
                self.throttle.on_rate_limited(retry_after)  # the next slot waits for Retry-After
                rate_limited += 1
                if rate_limited >= self.throttle_config.max_attempts:
                    limited = RateLimited(retry_after=retry_after)
                    limited.nothing_applied = True  # every answer was a 429
                    raise limited
                self.stats.retries += 1
                continue
            if status >= 500:
                self.throttle.on_failure()
                # The portal's own error envelope means the portal finished with the request; a
                # proxy's page (502/504 HTML) does not say whether the portal behind it still works.
                raise AmbiguousWriteOutcome(
                    f"the portal answered {status} to {method} {path}",
                    settled=isinstance(code, str),
                    status_code=status,
                    trace_id=trace_id,
                    refused=isinstance(code, str),
                )
            if status == 401:
                if relogged:
                    # Lost again right after signing in (revoked, challenged again): the 401 applied
                    # nothing, and nothing here needs a person. The write may be sent again later.
                    lost = SessionExpired("the portal session was lost again right after signing in")
                    lost.nothing_applied = True
                    raise lost
                relogged = True
                async with _nothing_applied():  # the 401 applied nothing
                    await self._relogin(generation, attempts, mfa_only=code == portal.ERROR_MFA_REQUIRED)
                continue
            if status == 403 and code == portal.ERROR_TERMS_NOT_ACCEPTED:
                refused = self._terms_not_accepted()
                refused.nothing_applied = True  # the portal refused the call before applying it
                raise refused
            if status == 403 and code == portal.ERROR_XSRF_INVALID:
                if xsrf_refreshed:
                    stale = SessionExpired("the portal refused a fresh anti-forgery token")
                    stale.nothing_applied = True  # refused before it was handled, as the first was
                    raise stale
                xsrf_refreshed = True
                async with _nothing_applied():
                    await self._refresh_xsrf()
                continue
            if status == 403:
                raise PermissionDenied(message)
            if status == 404:
                raise NotFound(message, code=str(code) if code else None)
            if 400 <= status < 500:
                errors = body.get(portal.ERROR_VALIDATION_FIELD) or [{}]
                field = errors[0].get("field") if isinstance(errors[0], dict) else None
                raise PortalRuleViolation(
                    str(code or status), message, field=field, status_code=status, trace_id=trace_id
                )
            raise UpstreamChanged(object_type, [f"{method} {path}: unexpected answer HTTP {status}"])

    def _write_result(
        self, raw: Any, collection: portal.Collection, company: str, response: httpx.Response | None
    ) -> WriteResult:
        check_shape(collection.shape, raw, object_type=collection.object_type)
        return WriteResult(
            records=collection.normalize(raw, self._context(company)),
            portal_id=raw.get(collection.id_field),
            http_status=response.status_code if response is not None else None,
            trace_id=response.headers.get(portal.TRACE_HEADER) if response is not None else None,
            raw=raw,
        )

    async def create_payment(
        self,
        company_upstream_id: str,
        *,
        bill_upstream_id: str,
        amount: Decimal,
        payment_method: str | None,
        debit_bank_account_upstream_id: str,
        requested_debit_date: date | None,
        external_reference: str,
        memo: str | None = None,
    ) -> WriteResult:
        """Create a payment of one bill. Without a date it is the earliest the portal allows."""
        if not 0 < len(external_reference) <= portal.EXTERNAL_REFERENCE_MAX:
            raise ValueError("external_reference must be 1 to 100 characters")
        async with _nothing_applied():  # signing in sends nothing of the payment
            await self.ensure_logged_in()
        day = requested_debit_date or self.portal_today()
        path = portal.company_collection(company_upstream_id, portal.PAYMENTS.path)
        for attempt in range(2):
            body = portal.payment_body(
                bill_id=bill_upstream_id, amount=amount, payment_method=payment_method,
                debit_bank_account_id=debit_bank_account_upstream_id, requested_debit_date=day.isoformat(),
                external_reference=external_reference, memo=memo,
            )  # fmt: skip
            try:
                raw, response = await self._api_write("POST", path, json_body=body, object_type="payment")
            except PortalRuleViolation as exc:
                # Refusals of the day were not applied: the cut-off's names the earliest allowed
                # day; "in the past" means the portal's clock moved since we last saw it, and the
                # refusal's Date header has told us where it is now.
                later: date | None = None
                if exc.code == portal.ERROR_CUT_OFF_PASSED:
                    later = _first_date(exc.message)
                elif exc.code == portal.ERROR_DEBIT_DATE_IN_PAST:
                    later = self.portal_today()
                if requested_debit_date is None and attempt == 0 and later is not None and later > day:
                    day = later
                    continue
                raise
            return self._write_result(raw, portal.PAYMENTS, company_upstream_id, response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def find_payments_by_reference(
        self, company_upstream_id: str, external_reference: str
    ) -> list[WriteResult]:
        """Every payment carrying this external reference (the portal does not keep them unique)."""
        path = portal.company_collection(company_upstream_id, portal.PAYMENTS.path)
        params = {
            portal.EXTERNAL_REFERENCE_FIELD: external_reference,
            portal.PAGE_NUMBER_PARAM: 1,
            portal.PAGE_SIZE_PARAM: portal.MAX_PAGE_SIZE,
        }
        body = await self._page(path, params, object_type="payment")
        return [
            self._write_result(item, portal.PAYMENTS, company_upstream_id, None)
            for item in body[portal.PAGE_ITEMS]
            if isinstance(item, dict) and item.get(portal.EXTERNAL_REFERENCE_FIELD) == external_reference
        ]

    async def _object_action(
        self, company: str, collection: portal.Collection, object_id: str, action: str, body: Any
    ) -> WriteResult:
        path = f"{portal.company_collection(company, collection.path)}/{object_id}/{action}"
        raw, response = await self._api_write(
            "POST", path, json_body=body, object_type=collection.object_type
        )
        return self._write_result(raw, collection, company, response)

    async def approve_bill(
        self, company_upstream_id: str, bill_upstream_id: str, *, comment: str | None = None
    ) -> WriteResult:
        """Approve a bill as this login (the current level's approver)."""
        return await self._object_action(company_upstream_id, portal.BILLS, bill_upstream_id, "approve",
                                         {"comment": comment} if comment else {})  # fmt: skip

    async def reject_bill(
        self, company_upstream_id: str, bill_upstream_id: str, *, comment: str | None = None
    ) -> WriteResult:
        """Reject a bill as this login."""
        return await self._object_action(company_upstream_id, portal.BILLS, bill_upstream_id, "reject",
                                         {"comment": comment} if comment else {})  # fmt: skip

    async def approve_payment(self, company_upstream_id: str, payment_upstream_id: str) -> WriteResult:
        """Approve a payment as one of its debit account's signing authorities."""
        return await self._object_action(
            company_upstream_id, portal.PAYMENTS, payment_upstream_id, "approve", {}
        )

    async def reject_payment(self, company_upstream_id: str, payment_upstream_id: str) -> WriteResult:
        """Reject a payment as one of its debit account's signing authorities."""
        return await self._object_action(
            company_upstream_id, portal.PAYMENTS, payment_upstream_id, "reject", {}
        )

    async def cancel_payment(self, company_upstream_id: str, payment_upstream_id: str) -> WriteResult:
        """Cancel a payment that has not been debited yet."""
        return await self._object_action(
            company_upstream_id, portal.PAYMENTS, payment_upstream_id, "cancel", {}
        )

    async def create_bill(
        self,
        company_upstream_id: str,
        *,
        vendor_upstream_id: str,
        number: str,
        issue_date: date,
        due_date: date,
        lines: list[dict[str, Any]],
        currency: str | None,
        memo: str | None,
        reference: str,
    ) -> WriteResult:
        """Create a bill; its memo carries `reference`. The portal routes it into its approval policy."""
        body = portal.bill_body(
            vendor_id=vendor_upstream_id, number=number, issue_date=issue_date.isoformat(),
            due_date=due_date.isoformat(), lines=lines, currency=currency,
            memo=portal.memo_with_reference(memo, reference),
        )  # fmt: skip
        path = portal.company_collection(company_upstream_id, portal.BILLS.path)
        raw, response = await self._api_write("POST", path, json_body=body, object_type="bill")
        return self._write_result(raw, portal.BILLS, company_upstream_id, response)

    async def upload_bill_attachment(
        self,
        company_upstream_id: str,
        bill_upstream_id: str,
        *,
        file_name: str,
        content: bytes,
        content_type: str,
    ) -> dict[str, Any]:
        """Attach a file to a bill; returns the portal's attachment object."""
        path = f"{portal.company_collection(company_upstream_id, portal.BILLS.path)}/{bill_upstream_id}/attachments"
        files = {portal.ATTACHMENT_FILE_FIELD: (file_name, content, content_type)}
        raw, _response = await self._api_write("POST", path, files=files, object_type="attachment")
        check_shape(portal.ATTACHMENT, raw, object_type="attachment")
        return dict(raw)

    async def create_invoice(
        self,
        company_upstream_id: str,
        *,
        customer_upstream_id: str,
        number: str | None,
        issue_date: date | None,
        terms: str | None,
        due_date: date | None,
        lines: list[dict[str, Any]],
        memo: str | None,
        reference: str,
        send: str,
        scheduled_send_date: date | None,
        reminders: dict[str, Any] | None,
        recurring: dict[str, Any] | None,
    ) -> WriteResult:
        """Create an invoice (send now, schedule or draft); its memo carries `reference`."""
        body = portal.invoice_body(
            customer_id=customer_upstream_id, number=number,
            issue_date=issue_date.isoformat() if issue_date else None, terms=terms,
            due_date=due_date.isoformat() if due_date else None, lines=lines,
            memo=portal.memo_with_reference(memo, reference), send=send,
            scheduled_send_date=scheduled_send_date.isoformat() if scheduled_send_date else None,
            reminders=reminders, recurring=recurring,
        )  # fmt: skip
        path = portal.company_collection(company_upstream_id, portal.INVOICES.path)
        raw, response = await self._api_write("POST", path, json_body=body, object_type="invoice")
        return self._write_result(raw, portal.INVOICES, company_upstream_id, response)

    async def find_by_memo_reference(
        self, company_upstream_id: str, object_type: str, reference: str, *, modified_since: datetime
    ) -> WriteResult | None:
        """The bill or invoice whose memo carries `reference`, among those changed since then."""
        collection = portal.BILLS if object_type == "bill" else portal.INVOICES
        path = portal.company_collection(company_upstream_id, collection.path)
        page_number = 1
        while True:
            params = {
                portal.PAGE_NUMBER_PARAM: page_number,
                portal.PAGE_SIZE_PARAM: portal.MAX_PAGE_SIZE,
                portal.MODIFIED_SINCE_PARAM: portal.timestamp_param(modified_since),
            }
            body = await self._page(path, params, object_type=collection.object_type)
            for item in body[portal.PAGE_ITEMS]:
                if isinstance(item, dict) and portal.memo_has_reference(item.get("memo"), reference):
                    return self._write_result(item, collection, company_upstream_id, None)
            if page_number >= body[portal.PAGE_TOTAL_PAGES]:
                return None
            page_number += 1

    async def send_reminder(self, company_upstream_id: str, invoice_upstream_id: str) -> WriteResult:
        """Send a manual reminder for an invoice now; `raw` is the portal's reminder, `records` the
        reminder as a part of its invoice."""
        path = f"{portal.company_collection(company_upstream_id, portal.INVOICES.path)}/{invoice_upstream_id}/reminders"
        raw, response = await self._api_write("POST", path, json_body={}, object_type="reminder")
        check_shape(portal.REMINDER, raw, object_type="reminder")
        records = portal.normalize_reminder(raw, self._context(company_upstream_id))
        return WriteResult(records, raw.get("reminderId"), response.status_code,
                           response.headers.get(portal.TRACE_HEADER), raw)  # fmt: skip

    async def list_reminders(
        self, company_upstream_id: str, invoice_upstream_id: str
    ) -> list[dict[str, Any]]:
        """The reminder schedule and sent log of one invoice."""
        path = portal.company_collection(company_upstream_id, "reminders")
        params = {"invoiceId": invoice_upstream_id, portal.PAGE_NUMBER_PARAM: 1,
                  portal.PAGE_SIZE_PARAM: portal.MAX_PAGE_SIZE}  # fmt: skip
        body = await self._page(path, params, object_type="reminder")
        items = [item for item in body[portal.PAGE_ITEMS] if isinstance(item, dict)]
        for item in items:
            check_shape(portal.REMINDER, item, object_type="reminder")
        return items

    def reminder_records(self, company_upstream_id: str, raw: dict[str, Any]) -> list[UpstreamRecord]:
        """One reminder of `list_reminders` as `send_reminder` gives it: a part of its invoice."""
        return portal.normalize_reminder(raw, self._context(company_upstream_id))

    def save_state(self) -> None:
        """Persist the session now if it or what the throttle has learned changed since it was last
        saved (a sync calls this when it ends; cookie changes are saved as they happen)."""
        if self._restored:
            self._persist(force=self.throttle.learned() != self._saved_throttle)

    def retire(self) -> None:
        """The connection's credentials were replaced: requests in flight, and those of callers that
        still hold this session (a write between its send and its read-back), go on with its portal
        session, but it saves nothing more and never signs in again (SessionReplaced: a retry gets
        the new session). The owner closes it once it is no longer used (`last_used`)."""
        self._retired = True
        self._detached = True

    async def aclose(self, *, persist: bool = True) -> None:
        """Close the HTTP client (the portal session stays alive), saving the state one last time.

        `persist=False` is for a session whose credentials were replaced: it saves nothing more, not
        even from a request still in flight, so its cookies cannot vouch for the new credentials."""
        if persist:
            self.save_state()
        else:
            self._detached = True
        await self._client.aclose()

    async def __aenter__(self) -> PortalSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def _nothing_applied() -> AsyncIterator[None]:
    """Mark an upstream error raised inside as raised before a write could have been applied."""
    try:
        yield
    except UpstreamError as exc:
        exc.nothing_applied = True
        raise


class _AlreadySignedIn(Exception):
    """Internal: the MFA page redirected to a signed-in page."""


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get(portal.RETRY_AFTER_HEADER))


_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")


def _first_date(message: str) -> date | None:
    """The first ISO date in a portal message (the cut-off refusal names the earliest day)."""
    match = _DATE.search(message or "")
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None
