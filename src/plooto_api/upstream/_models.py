"""The adapter's public data types: credentials, session state, feeds, records and pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class Credentials:
    """One portal login. The repr shows the username only."""

    username: str
    password: str = field(repr=False)
    totp_secret: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        secret = ", totp_secret=<set>" if self.totp_secret else ""
        return f"Credentials(username={self.username!r}, password=<hidden>{secret})"


@runtime_checkable
class SessionStateStore(Protocol):
    """Where a PortalSession keeps its cookies (incl. trusted device) between runs; encrypted by the caller."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class MemoryStateStore:
    """A SessionStateStore kept in memory (tests, one-off scripts)."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.state = state
        self.saves += 1

    def __repr__(self) -> str:
        return f"MemoryStateStore(saves={self.saves})"


@dataclass(frozen=True)
class MfaChallenge:
    """What the portal's MFA step asks for."""

    method: Literal["totp", "sms"]
    detail: str | None = None


@dataclass(frozen=True)
class ThrottleConfig:
    """Per-session throttle: a concurrency cap plus an adaptive (AIMD) request rate in requests/s."""

    max_concurrency: int = 4
    initial_rate: float = 10.0
    min_rate: float = 0.5
    max_rate: float = 50.0
    burst: float = 2.0  # requests that may start at once after an idle spell
    increase_after: int = 20  # consecutive healthy responses before the rate grows
    # Until the first 429, each healthy run adds `additive_increase` req/s or `proportional_increase`
    # of the rate, whichever is more.
    additive_increase: float = 1.0
    proportional_increase: float = 0.5
    # After a 429 the rate it came at is the ceiling: below `recovery_below` of it the rate grows
    # by `recovery_increase` (a share) per `recovery_after` healthy responses; from there it probes
    # past the ceiling by `probe_increase` per `increase_after`, so the portal's limit is met rarely.
    recovery_below: float = 0.8
    recovery_increase: float = 0.1
    recovery_after: int = 10
    probe_increase: float = 0.005
    # Seconds without a 429 after which the ceiling a 429 marked is forgotten and the rate grows as
    # before the first one: a storm (the portal's limit lowered for a while) is not kept for hours.
    ceiling_memory: float = 600.0
    decrease_factor_429: float = 0.5
    # The rate the portal let through between two 429s (see AdaptiveThrottle.on_rate_limited) counts
    # when at least `measure_paced_share` of the starts in between waited for their pace, at least
    # `measure_min_responses` answered, within `measure_window` seconds; the rate then drops to
    # `measured_share` of it.
    measure_paced_share: float = 0.5
    measure_min_responses: int = 10
    measure_window: float = 60.0
    measured_share: float = 0.95
    decrease_factor_latency: float = 0.75
    latency_factor: float = 3.0  # "well above baseline" = this many times the moving baseline ...
    latency_floor: float = 0.2  # ... and at least this many seconds above it
    decrease_cooldown: float = 1.0  # seconds between two multiplicative decreases
    max_attempts: int = 5  # per read request, first try included
    backoff_base: float = 0.1  # seconds; jittered exponential backoff between retries
    backoff_max: float = 5.0


SHARED_LANE = "shared"


@dataclass(frozen=True)
class Feed:
    """One syncable listing of the portal, declared in `portal.py`.

    `lane`: feeds of one lane are pulled in order (each may refer to what the earlier ones brought);
    the shared lane's feeds come first, as every lane refers to them, and the other lanes then run
    side by side, as none refers to another's objects."""

    name: str
    object_types: tuple[str, ...]
    incremental: bool
    cadence: Literal["fast", "slow"]
    lane: str = SHARED_LANE


@dataclass(frozen=True)
class UpstreamRef:
    """A reference to another portal object; the sync resolves it to a gateway id."""

    object_type: str
    upstream_id: str


@dataclass
class UpstreamRecord:
    """One portal object normalized to the fields of the matching `plooto_api.schemas` type."""

    object_type: str
    upstream_id: str
    company_upstream_id: str
    modified_at: datetime
    created_at: datetime
    status_raw: str | None
    url: str | None
    accounting_refs: dict[str, str | None]
    fields: dict[str, Any]
    # The portal's own last-modified time (None when it gives none, where modified_at is the fetch
    # time): orders two reads of one object, so an older one never overwrites a newer one.
    version: datetime | None = None


@dataclass
class ChangePage:
    """One page of a feed's listing."""

    records: list[UpstreamRecord]
    page_number: int
    total_pages: int
    total_count: int

    @property
    def has_more(self) -> bool:
        return self.page_number < self.total_pages


@dataclass
class SessionStats:
    """Counters of one PortalSession, for benchmarks and tests."""

    requests: int = 0
    responses_429: int = 0
    retries: int = 0
    logins: int = 0
    mfa_answers: int = 0
    relogins: int = 0
    xsrf_refreshes: int = 0


@dataclass
class WriteResult:
    """What a portal write returned: the object(s) it made or changed, and the evidence."""

    records: list[UpstreamRecord]  # the main object first, then what it carries (FX, mappings)
    portal_id: str | None
    http_status: int | None
    trace_id: str | None
    raw: Any = None  # the portal's JSON (for answers that are not mirrored objects, e.g. reminders)

    @property
    def record(self) -> UpstreamRecord | None:
        return self.records[0] if self.records else None
