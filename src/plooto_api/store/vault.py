"""The encrypted vault: passwords, TOTP secrets and portal session state, sealed with AES-GCM.

Envelope encryption: every entry has its own random data key, which encrypts the secret; the data
key is itself encrypted ("wrapped") by the master key. The master key comes from
PLOOTO_API_VAULT_KEY, or from a key file created on first run (0600) in the data directory. Each
entry records which master key wrapped it, so keys can be rotated; a wrong key fails loudly.
The key file holds the current key on its first line and, during a rotation, older keys on the
lines after it; a running process re-reads the file when it changes, so `plooto-api vault
rotate-key` needs no restart.
The entry's owner and purpose are bound as associated data, so a sealed value cannot be moved to
another connection or purpose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plooto_api.config import Settings
from plooto_api.log import get_logger
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.models import VaultEntry

KEY_FILE_NAME = "vault.key"
log = get_logger(__name__)


class VaultError(Exception):
    """The vault cannot open an entry: missing key, wrong key or tampered data."""


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"plooto-api vault key id" + key).hexdigest()[:16]


def _decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise VaultError("vault key is not valid base64") from exc
    if len(key) != 32:
        raise VaultError("vault key must be 32 bytes (base64 of 32 random bytes)")
    return key


def generate_key() -> str:
    """A new master key, as the base64 text PLOOTO_API_VAULT_KEY expects."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


class Vault:
    """Seals and opens secrets stored as `VaultEntry` rows."""

    def __init__(
        self, current_key: bytes, previous_keys: list[bytes] | None = None, *, key_file: Path | None = None
    ) -> None:
        self._current_id = _key_id(current_key)
        self._keys = {_key_id(k): k for k in [*(previous_keys or []), current_key]}
        self._key_file = key_file
        self._key_file_stamp = _stamp(key_file) if key_file is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        """The vault keyed from the environment, or from the data directory's key file."""
        previous = [_decode_key(k.get_secret_value()) for k in settings.vault_previous_keys]
        if settings.vault_key is not None:
            return cls(_decode_key(settings.vault_key.get_secret_value()), previous)
        path = settings.ensure_data_dir() / KEY_FILE_NAME
        current, *older = _load_or_create_key_file(path)
        return cls(current, [*previous, *older], key_file=path)

    @property
    def current_key_id(self) -> str:
        """Id of the key new entries are wrapped with."""
        self._refresh()
        return self._current_id

    @property
    def key_ids(self) -> list[str]:
        """Ids of every key this vault can open entries with, the current one first."""
        self._refresh()
        return [self._current_id, *sorted(k for k in self._keys if k != self._current_id)]

    @property
    def key_file(self) -> Path | None:
        """The key file the keys come from, or None when they come from the environment."""
        return self._key_file

    def _refresh(self) -> None:
        """Pick up a key file rewritten by `vault rotate-key` (keys already known stay usable)."""
        if self._key_file is None or _stamp(self._key_file) == self._key_file_stamp:
            return
        self._key_file_stamp = _stamp(self._key_file)
        current, *older = read_key_file(self._key_file)
        self._keys.update({_key_id(k): k for k in [*older, current]})
        self._current_id = _key_id(current)

    def _aad(self, owner_id: str, purpose: str) -> bytes:
        return f"plooto-api:{owner_id}:{purpose}".encode()

    def seal(self, session: Session, owner_id: str, purpose: str, value: Any) -> None:
        """Encrypt a JSON-serializable value and store it for (owner, purpose), replacing any old one."""
        self._refresh()
        plaintext = json.dumps(value, separators=(",", ":")).encode()
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, self._aad(owner_id, purpose))
        wrap_nonce = secrets.token_bytes(12)
        wrapped = wrap_nonce + AESGCM(self._keys[self._current_id]).encrypt(
            wrap_nonce, data_key, self._aad(owner_id, purpose)
        )
        entry = self._entry(session, owner_id, purpose)
        if entry is None:
            entry = VaultEntry(id=new_id("vlt"), owner_id=owner_id, purpose=purpose)
            session.add(entry)
        entry.key_id = self._current_id
        entry.wrapped_data_key = wrapped
        entry.nonce = nonce
        entry.ciphertext = ciphertext
        entry.updated_at = utcnow()

    def open(self, session: Session, owner_id: str, purpose: str) -> Any | None:
        """The decrypted value for (owner, purpose), or None if nothing is stored."""
        entry = self._entry(session, owner_id, purpose)
        return None if entry is None else self._open_entry(entry)

    def delete(self, session: Session, owner_id: str, purpose: str | None = None) -> None:
        """Remove one secret, or every secret of an owner."""
        stmt = select(VaultEntry).where(VaultEntry.owner_id == owner_id)
        if purpose is not None:
            stmt = stmt.where(VaultEntry.purpose == purpose)
        for entry in session.scalars(stmt):
            session.delete(entry)

    def rewrap_all(self, session: Session) -> int:
        """Re-wrap every data key under the current master key (key rotation); returns how many."""
        total = 0
        while count := self.rewrap_batch(session, 1000):
            total += count
        return total

    def rewrap_batch(self, session: Session, limit: int = 100) -> int:
        """Re-wrap up to `limit` entries not under the current key; returns how many (0: none left).

        Rows are locked (PostgreSQL) so a concurrent `seal` of the same entry waits rather than
        being overwritten with a stale data key. Only the wrapping changes: ciphertexts stay.
        """
        self._refresh()
        count = 0
        stmt = (
            select(VaultEntry)
            .where(VaultEntry.key_id != self._current_id)
            .order_by(VaultEntry.id)
            .limit(limit)
            .with_for_update()
        )
        for entry in session.scalars(stmt):
            data_key = self._unwrap(entry)
            wrap_nonce = secrets.token_bytes(12)
            entry.wrapped_data_key = wrap_nonce + AESGCM(self._keys[self._current_id]).encrypt(
                wrap_nonce, data_key, self._aad(entry.owner_id, entry.purpose)
            )
            entry.key_id = self._current_id
            count += 1
        return count

    def _entry(self, session: Session, owner_id: str, purpose: str) -> VaultEntry | None:
        stmt = select(VaultEntry).where(VaultEntry.owner_id == owner_id, VaultEntry.purpose == purpose)
        return session.scalars(stmt).first()

    def key_usage(self, session: Session) -> dict[str, int]:
        """How many entries each master key wraps, by key id."""
        rows = session.execute(select(VaultEntry.key_id, func.count()).group_by(VaultEntry.key_id))
        return {key_id: int(count) for key_id, count in rows}

    def _unwrap(self, entry: VaultEntry) -> bytes:
        if entry.key_id not in self._keys:
            self._refresh()  # another process may have rotated the key file
        key = self._keys.get(entry.key_id)
        if key is None:
            raise VaultError(
                f"vault entry {entry.id} was sealed with key {entry.key_id}, which is not configured "
                "(set PLOOTO_API_VAULT_KEY or PLOOTO_API_VAULT_PREVIOUS_KEYS)"
            )
        try:
            return AESGCM(key).decrypt(
                entry.wrapped_data_key[:12],
                entry.wrapped_data_key[12:],
                self._aad(entry.owner_id, entry.purpose),
            )
        except InvalidTag as exc:
            raise VaultError(f"vault entry {entry.id} cannot be opened: wrong key or tampered data") from exc

    def _open_entry(self, entry: VaultEntry) -> Any:
        data_key = self._unwrap(entry)
        try:
            plaintext = AESGCM(data_key).decrypt(
                entry.nonce, entry.ciphertext, self._aad(entry.owner_id, entry.purpose)
            )
        except InvalidTag as exc:
            raise VaultError(f"vault entry {entry.id} cannot be opened: tampered data") from exc
        return json.loads(plaintext)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_ino


def read_key_file(path: Path) -> list[bytes]:
    """The keys in a key file: the current one first, then older ones still accepted for reading."""
    keys = [_decode_key(line) for line in path.read_text().splitlines() if line.strip()]
    if not keys:
        raise VaultError(f"vault key file {path} holds no key")
    return keys


def write_key_file(path: Path, keys: list[str]) -> None:
    """Replace the key file atomically (owner-only): readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(key + "\n" for key in keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load_or_create_key_file(path: Path) -> list[bytes]:
    if path.exists():
        return read_key_file(path)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning("vault_key_file_created", path=str(path), hint="set PLOOTO_API_VAULT_KEY in production")
    return [_decode_key(key)]
