"""Gateway configuration: environment variables with the `PLOOTO_API_` prefix, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".plooto-api")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8400
DATABASE_FILENAME = "plooto-api.db"


class Settings(BaseSettings):
    """Everything the gateway can be told. Nothing is required: the defaults start a working gateway."""

    model_config = SettingsConfigDict(env_prefix="PLOOTO_API_", extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Where the SQLite store and keys live.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to SQLite at <data dir>/plooto-api.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    upstream_url: str | None = Field(
        default=None, description="Base URL of the Plooto portal; unset means the embedded sandbox."
    )
    vault_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 random bytes that encrypts the vault; unset: a key file in the data dir.",
    )
    vault_previous_keys: list[SecretStr] = Field(
        default_factory=list, description="Older vault keys, still accepted for reading during rotation."
    )
    sync_fast_interval_seconds: float = Field(default=30.0, gt=0, description="Open items sync period.")
    sync_slow_interval_seconds: float = Field(default=300.0, gt=0, description="Reference data sync period.")
    sync_reconcile_interval_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="How often each feed is listed whole, by the portal's clock, to find the objects "
        "deleted in the portal since (an incremental pull cannot see them); 0: never.",
    )
    keep_alive_interval_seconds: float = Field(default=300.0, gt=0, description="Portal keep-alive period.")
    connection_scan_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often a gateway looks for connections added or removed elsewhere.",
    )
    # The per-connection throttle (see plooto_api.upstream._throttle). The portal's limit is learned
    # as it is met; these bound that learning and say where a connection with nothing learned starts.
    # The defaults and the 0.5 floor are ThrottleConfig's, written out so that reading settings does
    # not import the upstream package (a third of a second on every command); a test keeps them equal.
    upstream_max_rate: float = Field(
        default=50.0, ge=0.5, le=1000, description="Portal requests/s a connection never exceeds."
    )
    upstream_initial_rate: float = Field(
        default=10.0,
        ge=0.5,
        description="Portal requests/s a connection starts at before it has learned the portal's limit "
        "(set it to the limit when you know it; a restart resumes the rate learned instead).",
    )
    upstream_max_concurrency: int = Field(
        default=4, ge=1, le=64, description="Portal requests in flight at once per connection."
    )
    event_retention_days: int = Field(default=90, ge=1, description="Events older than this are purged.")
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook targets on private or loopback addresses (tests, dev)."
    )
    webhook_delivery_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often the delivery worker looks for due webhook deliveries."
    )
    fresh_read_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a `?fresh=true` read may wait for the portal, its "
        "retries included, before it answers 503 (the stored copy is served without ?fresh=true).",
    )
    write_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a write request waits for the portal before answering 202."
    )
    write_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long one portal write may take before its outcome is unknown."
    )
    write_settle_seconds: float = Field(
        default=120.0,
        gt=0,
        description="After an unknown outcome, how long the portal may still apply a write; a write not "
        "found by then is sent again.",
    )
    write_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often a running gateway takes up again the writes a portal outage left open, "
        "and the least wait before one is tried again (the wait grows to a quarter of the write's age, "
        "at most 5 minutes).",
    )
    write_expire_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A write the portal could not be sent within this long after it was requested fails "
        "(503 write_expired) rather than being sent late; one sent but unconfirmed is read back, never "
        "sent again after it.",
    )
    auth_attempts_per_client: int = Field(
        default=10,
        ge=1,
        description="POST /authenticate and /authenticate/mfa attempts per client IP per window.",
    )
    auth_attempts_per_username: int = Field(
        default=5, ge=1, description="Login attempts per username (MFA: per challenge) per window."
    )
    auth_attempt_window_seconds: float = Field(
        default=60.0, gt=0, description="The rate limit's sliding window."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest JSON request body accepted."
    )
    max_upload_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest attachment accepted (multipart requests)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        # Plain postgres URLs are common in the wild; route them to the psycopg 3 driver we ship.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("upstream_initial_rate")
    @classmethod
    def _initial_rate_within_max(cls, value: float, info: ValidationInfo) -> float:
        ceiling = info.data.get("upstream_max_rate")
        if ceiling is not None and value > ceiling:
            raise ValueError(f"{value:g} req/s is above upstream_max_rate ({ceiling:g} req/s)")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / DATABASE_FILENAME).resolve()}"

    def ensure_data_dir(self) -> Path:
        """Create the data directory (owner-only) if it does not exist and return it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.data_dir
