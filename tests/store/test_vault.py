"""The vault seals secrets with AES-GCM, refuses wrong keys loudly and supports key rotation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.config import Settings
from plooto_api.store.models import VaultEntry
from plooto_api.store.vault import Vault, VaultError, generate_key


def _vault(key: str, *previous: str) -> Vault:
    return Vault.from_settings(
        Settings(vault_key=SecretStr(key), vault_previous_keys=[SecretStr(k) for k in previous])
    )


def test_seal_and_open_without_plaintext_at_rest(sessions: sessionmaker[Session], engine: Engine) -> None:
    vault = _vault(generate_key())
    secret = {"password": "correct horse battery staple", "totp_secret": "JBSWY3DPEHPK3PXP"}
    with sessions.begin() as session:
        vault.seal(session, "conn_1", "credentials", secret)
    with sessions() as session:
        assert vault.open(session, "conn_1", "credentials") == secret
        assert vault.open(session, "conn_1", "session_state") is None
        row = session.scalars(select(VaultEntry)).one()
        assert b"correct horse" not in row.ciphertext and b"JBSWY3DP" not in row.ciphertext
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        assert database is not None
        raw = Path(database).read_bytes() + (
            Path(database + "-wal").read_bytes() if Path(database + "-wal").exists() else b""
        )
        assert b"correct horse" not in raw


def test_wrong_key_fails_loudly(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _vault(generate_key()).seal(session, "conn_1", "credentials", {"password": "x"})
    with sessions() as session, pytest.raises(VaultError, match="not configured"):
        _vault(generate_key()).open(session, "conn_1", "credentials")


def test_tampering_and_moving_entries_are_detected(sessions: sessionmaker[Session]) -> None:
    vault = _vault(generate_key())
    with sessions.begin() as session:
        vault.seal(session, "conn_1", "credentials", {"password": "x"})
        row = session.scalars(select(VaultEntry)).one()
        row.owner_id = "conn_2"  # a sealed value cannot be moved to another connection
    with sessions() as session, pytest.raises(VaultError, match="wrong key or tampered"):
        vault.open(session, "conn_2", "credentials")


def test_rotation_rewraps_under_the_new_key(sessions: sessionmaker[Session]) -> None:
    old, new = generate_key(), generate_key()
    with sessions.begin() as session:
        _vault(old).seal(session, "conn_1", "credentials", {"password": "x"})
    rotating = _vault(new, old)
    with sessions.begin() as session:
        assert rotating.open(session, "conn_1", "credentials") == {"password": "x"}
        assert rotating.rewrap_all(session) == 1
    with sessions() as session:
        assert _vault(new).open(session, "conn_1", "credentials") == {"password": "x"}


def test_key_file_is_created_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLOOTO_API_VAULT_KEY", raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    first = Vault.from_settings(settings)
    mode = stat.S_IMODE(os.stat(tmp_path / "data" / "vault.key").st_mode)
    assert mode == 0o600
    assert Vault.from_settings(settings).current_key_id == first.current_key_id


def test_bad_keys_are_refused() -> None:
    with pytest.raises(VaultError, match="32 bytes"):
        _vault("c2hvcnQ=")
    with pytest.raises(VaultError, match="base64"):
        _vault("not base64 at all!")
