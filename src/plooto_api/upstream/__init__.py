"""The only code that knows the Plooto portal: sign-in, MFA, session, throttle, reads, drift.

Everything the portal is (paths, forms, field names, statuses, shapes, feeds) is declared in
`plooto_api.upstream.portal`; the mechanics live in the private modules. Callers use:

    session = PortalSession(base_url, Credentials(...), state_store)
    await session.ensure_logged_in()
    page = await session.list_changes(company_id, "bills", modified_since=cursor)
"""

from plooto_api.upstream._errors import (
    AccountLocked,
    AmbiguousWriteOutcome,
    AuthenticationError,
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
from plooto_api.upstream._models import (
    SHARED_LANE,
    ChangePage,
    Credentials,
    Feed,
    MemoryStateStore,
    MfaChallenge,
    SessionStateStore,
    SessionStats,
    ThrottleConfig,
    UpstreamRecord,
    UpstreamRef,
    WriteResult,
)
from plooto_api.upstream._session import PortalSession
from plooto_api.upstream._throttle import AdaptiveThrottle, LoopStalls
from plooto_api.upstream.portal import (
    DOCUMENT_DATE_RANGE,
    FEEDS,
    OBJECT_SOURCES,
    PAYMENT_ON_HOLD,
    SCHEDULE_HORIZON,
    WRITE_LIMITS,
    business_today,
    request_field,
)

# The object types PortalSession.fetch_object reads one at a time.
FETCHABLE_TYPES: frozenset[str] = frozenset({"company", *OBJECT_SOURCES})

__all__ = [
    "DOCUMENT_DATE_RANGE",
    "FEEDS",
    "FETCHABLE_TYPES",
    "PAYMENT_ON_HOLD",
    "SCHEDULE_HORIZON",
    "SHARED_LANE",
    "WRITE_LIMITS",
    "AccountLocked",
    "AdaptiveThrottle",
    "AmbiguousWriteOutcome",
    "AuthenticationError",
    "ChangePage",
    "Credentials",
    "Feed",
    "InvalidCredentials",
    "InvalidMfaCode",
    "LoginBlocked",
    "LoopStalls",
    "MemoryStateStore",
    "MfaChallenge",
    "MfaRequired",
    "NotFound",
    "PermissionDenied",
    "PortalRuleViolation",
    "PortalSession",
    "RateLimited",
    "SessionExpired",
    "SessionReplaced",
    "SessionStateStore",
    "SessionStats",
    "TermsNotAccepted",
    "ThrottleConfig",
    "UpstreamChanged",
    "UpstreamError",
    "UpstreamRecord",
    "UpstreamRef",
    "UpstreamUnavailable",
    "WriteResult",
    "business_today",
    "request_field",
]
