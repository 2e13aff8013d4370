"""Portal sign-in: hashed passwords, lockout, MFA (TOTP or SMS), trusted devices and session expiry.

All times come from the sandbox clock, so tests drive idle/absolute expiry and lockout windows
without sleeping.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import pyotp

from plooto_sandbox.config import SandboxConfig
from plooto_sandbox.model import OutboxMessage, User
from plooto_sandbox.store import PortalState

SCRYPT_N = 2**14


@lru_cache(maxsize=256)
def hash_password(password: str, salt: bytes) -> bytes:
    """scrypt hash; memoized because every seeded demo user shares one password and salt."""
    return hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=8, p=1, dklen=32)


def password_matches(user: User, password: str) -> bool:
    """Constant-time check of a password against the user's hash."""
    return hmac.compare_digest(hash_password(password, user.password_salt), user.password_hash)


@dataclass(slots=True)
class Session:
    """A signed-in browser session (cookie `.Plooto.Session`)."""

    token: str
    user_id: str
    created: datetime
    last_seen: datetime
    mfa_pending: bool
    xsrf_token: str
    selected_company_id: str | None = None
    sms_code: str | None = None
    sms_code_expires: datetime | None = None


@dataclass(slots=True)
class TrustedDevice:
    """A "trust this device" grant: skips MFA for one user until it expires."""

    token: str
    user_id: str
    expires: datetime


@dataclass(slots=True)
class LoginOutcome:
    """Result of a password check: a session, or the portal error code shown on the form."""

    session: Session | None
    error_code: str | None
    user: User | None = None


def _lock_if_needed(state: PortalState, config: SandboxConfig, user: User) -> None:
    user.failed_attempts += 1
    if user.failed_attempts >= config.lockout_threshold:
        user.locked_until = state.now + timedelta(minutes=config.lockout_minutes)
        user.failed_attempts = 0


def is_locked(state: PortalState, user: User) -> bool:
    """True while a lockout is running."""
    return user.locked_until is not None and state.now < user.locked_until


def attempt_login(
    state: PortalState, config: SandboxConfig, email: str, password: str, device_token: str | None
) -> LoginOutcome:
    """Check credentials; on success open a session (MFA-pending unless the device is trusted)."""
    user = state.users_by_email.get(email.strip().lower())
    if user is None:
        # Spend the same effort as a real check so timing does not reveal which emails exist.
        hash_password(password, b"unknown-user-salt")
        return LoginOutcome(None, "InvalidCredentials")
    if is_locked(state, user):
        return LoginOutcome(None, "AccountLocked", user)
    if not password_matches(user, password):
        _lock_if_needed(state, config, user)
        return LoginOutcome(None, "AccountLocked" if is_locked(state, user) else "InvalidCredentials", user)
    user.failed_attempts = 0
    trusted = False
    if device_token:
        device = state.trusted_devices.get(device_token)
        trusted = device is not None and device.user_id == user.user_id and device.expires > state.now
    session = Session(
        token=secrets.token_urlsafe(32),
        user_id=user.user_id,
        created=state.now,
        last_seen=state.now,
        mfa_pending=user.mfa_method is not None and not trusted,
        xsrf_token=secrets.token_urlsafe(24),
    )
    state.sessions[session.token] = session
    return LoginOutcome(session, None, user)


def live_session(state: PortalState, config: SandboxConfig, token: str | None) -> Session | None:
    """The session for a cookie, dropping it if idle or absolute lifetime is exceeded."""
    if not token:
        return None
    session: Session | None = state.sessions.get(token)
    if session is None:
        return None
    idle = timedelta(minutes=config.session_idle_minutes)
    absolute = timedelta(hours=config.session_absolute_hours)
    if state.now - session.last_seen > idle or state.now - session.created > absolute:
        del state.sessions[token]
        return None
    return session


def refresh(state: PortalState, session: Session) -> None:
    """Each authenticated request restarts the idle timer."""
    session.last_seen = state.now


def issue_sms_code(state: PortalState, config: SandboxConfig, session: Session, user: User) -> None:
    """Text a fresh 6-digit code; only the newest code is accepted."""
    code = f"{secrets.randbelow(10**6):06d}"
    session.sms_code = code
    session.sms_code_expires = state.now + timedelta(minutes=config.sms_code_minutes)
    state.send(
        OutboxMessage(
            "Sms",
            user.phone or "",
            user.email,
            None,
            f"Your Plooto verification code is {code}. It expires in {config.sms_code_minutes} minutes.",
            code,
            state.now,
        )
    )


def verify_mfa(state: PortalState, config: SandboxConfig, session: Session, user: User, code: str) -> bool:
    """Check a TOTP or SMS code; failures count toward the lockout like bad passwords."""
    code = code.strip()
    ok = False
    if user.mfa_method == "Totp" and user.totp_secret:
        ok = pyotp.TOTP(user.totp_secret).verify(code, for_time=state.now, valid_window=1)
    elif user.mfa_method == "Sms" and session.sms_code and session.sms_code_expires:
        ok = hmac.compare_digest(code, session.sms_code) and state.now <= session.sms_code_expires
    if ok:
        session.mfa_pending = False
        session.sms_code = None
        user.failed_attempts = 0
        return True
    _lock_if_needed(state, config, user)
    if is_locked(state, user):
        state.sessions.pop(session.token, None)
    return False


def trust_device(state: PortalState, config: SandboxConfig, user: User) -> TrustedDevice:
    """Grant a long-lived device cookie that skips MFA for this user."""
    device = TrustedDevice(
        secrets.token_urlsafe(32), user.user_id, state.now + timedelta(days=config.trusted_device_days)
    )
    state.trusted_devices[device.token] = device
    return device


def revoke_sessions(state: PortalState, user_id: str | None = None) -> int:
    """Drop all sessions, or one user's; returns how many."""
    doomed = [t for t, s in state.sessions.items() if user_id is None or s.user_id == user_id]
    for token in doomed:
        del state.sessions[token]
    return len(doomed)


def form_token(secret: bytes, antiforgery_cookie: str) -> str:
    """The hidden form field value bound to the `.Plooto.Antiforgery` cookie."""
    return hmac.new(secret, antiforgery_cookie.encode(), hashlib.sha256).hexdigest()


def form_token_valid(secret: bytes, antiforgery_cookie: str | None, submitted: str | None) -> bool:
    """Check a submitted form token against the anti-forgery cookie."""
    if not antiforgery_cookie or not submitted:
        return False
    return hmac.compare_digest(form_token(secret, antiforgery_cookie), submitted)
