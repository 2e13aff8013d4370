"""SandboxConfig: every knob of the emulated portal, with defaults close to a real financial portal."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Monday 2026-03-02 09:00 in Toronto: a business morning, so fresh payments move on the same day.
DEFAULT_START_TIME = datetime(2026, 3, 2, 14, 0, 0, tzinfo=UTC)


@dataclass(slots=True)
class SandboxConfig:
    """Configuration for one sandbox instance (seed, scale, security timings, limits)."""

    seed: int = 42
    companies: int = 3
    bills_per_company: int = 50
    start_time: datetime = field(default_factory=lambda: DEFAULT_START_TIME)
    control_enabled: bool = True
    session_idle_minutes: int = 15
    session_absolute_hours: int = 12
    lockout_threshold: int = 5
    lockout_minutes: int = 15
    trusted_device_days: int = 30
    sms_code_minutes: int = 10
    rate_limit_per_second: float = 25.0
    rate_limit_burst: int = 50
    fault_seed: int = 1234
    state_file: Path | None = None
    # Cookies are marked Secure only behind TLS; the sandbox serves plain HTTP on loopback.
    secure_cookies: bool = False
