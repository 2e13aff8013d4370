"""Errors raised by the portal adapter, arranged so callers catch them by meaning.

```
UpstreamError
├── AuthenticationError
│   ├── InvalidCredentials          wrong username/password → connection requires_action(password)
│   ├── AccountLocked               the portal locked the user (`until` when known) → connection locked
│   ├── MfaRequired                 a code must be supplied (`challenge`) → requires_action(mfa)
│   ├── InvalidMfaCode              the portal refused the MFA code
│   ├── TermsNotAccepted            the portal published new terms of service the user must accept
│   │                               in person (never accepted by the gateway) → requires_action(terms)
│   ├── SessionExpired              the portal session was lost and signing in again did not keep it
│   │                               (lost again at once): transient, no person needed → unavailable
│   └── LoginBlocked                a sign-in the login guard stopped (a refused password, a lock, a
│                                   code awaited): nothing was sent; a person must act first
├── PermissionDenied                the user's role lacks what the endpoint needs
├── NotFound                        confirmed absence (404) — the only error that means "gone"
├── RateLimited                     429 after every retry (`retry_after` seconds)
├── UpstreamUnavailable             5xx, timeouts, connection errors after the read retries
│   └── SessionReplaced             this session's credentials were replaced: a new session has them
├── UpstreamChanged                 drift: the portal's shape is not what `portal.py` expects
├── PortalRuleViolation             a 4xx business rule (`code`, `message`, `field`)
└── AmbiguousWriteOutcome           a write was sent but its outcome is unknown
```

Messages never carry secrets: no password, TOTP secret, cookie or code ever goes into one.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plooto_api.upstream._models import MfaChallenge


class UpstreamError(Exception):
    """Base of every error of the portal adapter."""

    # Raised by a write before it could have been applied (signing in first or again after the
    # portal's 401, a fresh anti-forgery token, 429s): the portal has nothing of it.
    nothing_applied: bool = False


class AuthenticationError(UpstreamError):
    """Signing in to the portal failed or needs the user."""


class InvalidCredentials(AuthenticationError):
    """The portal refused the username/password. Never retried (lockout)."""


class AccountLocked(AuthenticationError):
    """The portal has temporarily locked the user."""

    def __init__(
        self,
        message: str = "the portal account is locked",
        *,
        until: datetime | None = None,
        at: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.until = until  # when the lock ends, by the portal's clock (when it says)
        self.at = at  # the portal's clock when the lock was seen: `until - at` is the time left

    def seconds_left(self) -> int | None:
        """How long the lock lasts yet, in whole seconds (at least 1), when the portal said."""
        if self.until is None or self.at is None:
            return None
        return max(1, math.ceil((self.until - self.at).total_seconds()))


class MfaRequired(AuthenticationError):
    """The portal asks for an MFA code the adapter cannot produce itself (SMS, or no TOTP secret)."""

    def __init__(self, challenge: MfaChallenge, message: str | None = None) -> None:
        super().__init__(message or f"the portal requires an MFA code ({challenge.method})")
        self.challenge = challenge


class InvalidMfaCode(AuthenticationError):
    """The portal refused the MFA code."""


class TermsNotAccepted(AuthenticationError):
    """The portal asks the user to accept new terms of service before using it (after signing in,
    or on any API call once they are published). A legal agreement: only the person accepts it, in
    the portal; the gateway never does. The password was accepted, so trying again later risks no
    lockout; it succeeds once the person has accepted."""

    def __init__(
        self,
        message: str = "the portal asks the user to accept its new terms of service in the portal",
        *,
        at: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.at = at  # the portal's time when it asked (its clock may not be this machine's)


class SessionExpired(AuthenticationError):
    """The portal session is gone (idle/absolute expiry, revoked) and could not be renewed: lost
    again right after signing in, or a pending sign-in dropped. The portal accepted the login, so
    nothing needs a person and trying again later risks no lockout: callers treat it as the portal
    being unavailable (a read 503, a write left open), never as `requires_action`. Raised by a write
    before it was handled, it says so (`nothing_applied`)."""


class LoginBlocked(AuthenticationError):
    """A sign-in that the session's login guard stopped before anything was sent: the portal refused
    this login before (its password, its codes) or locked it, and only a person can change that.
    Signing in again by itself is how a gateway trips the portal's lockout."""


class PermissionDenied(UpstreamError):
    """The portal user lacks the permission for this request."""


class NotFound(UpstreamError):
    """The portal confirmed that the object (or company) does not exist for this user."""

    def __init__(self, message: str = "not found", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # the portal's errorCode: NotFound (object) or CompanyNotFound (no access)


class RateLimited(UpstreamError):
    """The portal kept answering 429 after every retry."""

    def __init__(
        self, message: str = "the portal rate limit was exceeded", *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """The portal failed (5xx, timeout, connection error) after the read retries."""

    def __init__(self, message: str = "the portal is unavailable", *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class SessionReplaced(UpstreamUnavailable):
    """The connection's credentials were replaced while this session was in use (a new password, a
    new sign-in): it finishes what needs no new sign-in, and a caller that retries gets the session
    with the new credentials. It never signs in with the old ones."""

    def __init__(
        self, message: str = "the connection's credentials were replaced; retry with its new session"
    ) -> None:
        super().__init__(message)


class UpstreamChanged(UpstreamError):
    """The portal's response does not have the expected shape (drift). Never retried."""

    def __init__(self, object_type: str, differences: list[str], *, portal_type: str | None = None) -> None:
        super().__init__(f"the portal's {object_type} shape changed: " + "; ".join(differences))
        self.object_type = object_type
        self.portal_type = portal_type or object_type
        self.differences = differences


class PortalRuleViolation(UpstreamError):
    """The portal refused a request by one of its business rules (4xx)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        status_code: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.status_code = status_code
        self.trace_id = trace_id  # the portal's request id, evidence for the audit log


class AmbiguousWriteOutcome(UpstreamError):
    """A write reached the portal but its outcome is unknown; read back before deciding.

    `settled` says the portal is done with the request (it answered, if with a 5xx, or closed the
    connection after its answer began), so a read-back now is conclusive. Not settled (we gave up
    waiting) means the portal may still be applying it: a read-back that finds nothing proves
    nothing until the portal has had time to finish. `refused`: the portal answered a 5xx in its own
    error envelope, its way of saying it failed the request and applied nothing.
    """

    def __init__(
        self,
        message: str,
        *,
        settled: bool,
        status_code: int | None = None,
        trace_id: str | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.settled = settled
        self.status_code = status_code
        self.trace_id = trace_id
        self.refused = refused
