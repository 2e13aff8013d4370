"""Configuration defaults and the environment variables scripts rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from plooto_api.config import Settings
from plooto_api.upstream import ThrottleConfig


def test_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "HOST", "PORT", "UPSTREAM_URL"):
        monkeypatch.delenv(f"PLOOTO_API_{name}", raising=False)
    settings = Settings()
    assert settings.data_dir == Path(".plooto-api")
    assert (settings.host, settings.port) == ("127.0.0.1", 8400)
    assert settings.resolved_database_url.endswith("/.plooto-api/plooto-api.db")
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.upstream_url is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLOOTO_API_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PLOOTO_API_PORT", "9123")
    monkeypatch.setenv("PLOOTO_API_HOST", "0.0.0.0")
    settings = Settings()
    assert settings.port == 9123 and settings.host == "0.0.0.0"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'plooto-api.db'}"
    monkeypatch.setenv("PLOOTO_API_DATABASE_URL", "postgresql://app@db.internal/plooto")
    assert Settings().resolved_database_url == "postgresql+psycopg://app@db.internal/plooto"
    assert Settings(port=8000).port == 8000  # flags beat the environment


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLOOTO_API_PORT", "70000")
    with pytest.raises(ValueError, match="65535"):
        Settings()


def test_throttle_settings_and_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLOOTO_API_UPSTREAM_INITIAL_RATE", "25")
    monkeypatch.setenv("PLOOTO_API_UPSTREAM_MAX_CONCURRENCY", "8")
    settings = Settings()
    assert (settings.upstream_initial_rate, settings.upstream_max_rate) == (25.0, 50.0)
    assert settings.upstream_max_concurrency == 8
    monkeypatch.setenv("PLOOTO_API_UPSTREAM_MAX_RATE", "20")
    with pytest.raises(ValueError, match=r"25 req/s is above upstream_max_rate \(20 req/s\)"):
        Settings()
    monkeypatch.setenv("PLOOTO_API_UPSTREAM_MAX_RATE", "0")
    with pytest.raises(ValueError, match=r"greater than or equal to 0\.5"):
        Settings()


def test_throttle_defaults_are_the_throttles_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INITIAL_RATE", "MAX_RATE", "MAX_CONCURRENCY"):
        monkeypatch.delenv(f"PLOOTO_API_UPSTREAM_{name}", raising=False)
    settings, throttle = Settings(), ThrottleConfig()
    assert (settings.upstream_initial_rate, settings.upstream_max_rate, settings.upstream_max_concurrency) == (
        throttle.initial_rate, throttle.max_rate, throttle.max_concurrency,
    )  # fmt: skip
    for name in ("upstream_initial_rate", "upstream_max_rate"):
        floors = [bound.ge for bound in Settings.model_fields[name].metadata if hasattr(bound, "ge")]
        assert floors == [throttle.min_rate], name
