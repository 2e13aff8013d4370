"""The `vault` commands: `status` (keys and what they wrap), `rotate-key` and `rewrap`.

Rotation without downtime. With the key file (the embedded default), `rotate-key` does it all: it
writes the new key first and keeps the old one on the following line, re-wraps every entry in small
transactions (running gateways re-read the key file and keep working, sealing with the new key from
then on), and drops the old key once nothing uses it. With PLOOTO_API_VAULT_KEY, the processes'
environment must change, so `rotate-key` prints the new key and the steps, and `rewrap` does the
re-wrapping once the new key is in force.
"""

from __future__ import annotations

import json

from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.config import Settings
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.vault import Vault, VaultError, generate_key, read_key_file, write_key_file

BATCH = 100


def _open(settings: Settings) -> tuple[Vault, Engine, sessionmaker[Session]]:
    from plooto_api.cli import CliError

    if settings.database_url is None:
        settings.ensure_data_dir()
    try:
        vault = Vault.from_settings(settings)
    except VaultError as exc:
        raise CliError(str(exc)) from exc
    engine = create_db_engine(settings.resolved_database_url)
    return vault, engine, session_factory(engine)


def _rewrap(vault: Vault, sessions: sessionmaker[Session], console: Console) -> int:
    """Re-wrap in batches of BATCH, each its own transaction, so no lock is held for long."""
    from plooto_api.cli import CliError

    total = 0
    try:
        while True:
            with transaction(sessions) as session:
                count = vault.rewrap_batch(session, BATCH)
            if not count:
                return total
            total += count
            console.print(f"  re-wrapped {total} entries")
    except VaultError as exc:
        raise CliError(f"{exc}; nothing is lost: re-run once the key is configured") from exc


def run_status(settings: Settings, console: Console) -> int:
    """Print the keys in force and how many entries each wraps; 1 if an entry's key is missing."""
    vault, engine, sessions = _open(settings)
    try:
        with sessions() as session:
            usage = vault.key_usage(session)
    finally:
        engine.dispose()
    source = f"key file {vault.key_file}" if vault.key_file else "PLOOTO_API_VAULT_KEY"
    console.print(f"vault keys from {source}")
    for key_id in vault.key_ids:
        role = "current " if key_id == vault.current_key_id else "previous"
        count = usage.get(key_id, 0)
        hint = "  (unused: can be dropped)" if role == "previous" and not count else ""
        console.print(f"  {role} {key_id}  {count} entries{hint}")
    missing = {k: n for k, n in usage.items() if k not in vault.key_ids}
    for key_id, count in missing.items():
        console.print(f"  MISSING  {key_id}  {count} entries cannot be opened: configure this key")
    console.print(f"{sum(usage.values())} entries")
    return 1 if missing else 0


def run_rotate_key(settings: Settings, console: Console, *, keep_old: bool = False) -> int:
    """Rotate the master key (see the module docstring)."""
    new_key = generate_key()
    if settings.vault_key is not None:
        old = [
            settings.vault_key.get_secret_value(),
            *(k.get_secret_value() for k in settings.vault_previous_keys),
        ]
        console.print("A new vault key was generated. PLOOTO_API_VAULT_KEY comes from the environment, so:")
        console.print(
            "  1. on every gateway and worker, add the new key to the readable keys, restarting them"
        )
        console.print("     one at a time:")
        console.print(f"       PLOOTO_API_VAULT_PREVIOUS_KEYS='{json.dumps([*old[1:], new_key])}'")
        console.print("  2. then make it the current key, again one process at a time:")
        console.print(f"       PLOOTO_API_VAULT_KEY='{new_key}'")
        console.print(f"       PLOOTO_API_VAULT_PREVIOUS_KEYS='{json.dumps(old)}'")
        console.print(
            "  3. run `plooto-api vault rewrap` with those settings (entries are re-wrapped in batches)"
        )
        console.print("  4. when `plooto-api vault status` shows 0 entries under the old key, remove")
        console.print("     PLOOTO_API_VAULT_PREVIOUS_KEYS (restarting one process at a time).")
        return 0
    vault, engine, sessions = _open(settings)
    try:
        path = vault.key_file
        assert path is not None
        old_keys = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        read_key_file(path)  # refuse to rotate from a damaged file
        write_key_file(path, [new_key, *old_keys])
        console.print(
            f"new key written to {path} (the old key stays readable until every entry is re-wrapped)"
        )
        total = _rewrap(vault, sessions, console)
        with sessions() as session:
            usage = vault.key_usage(session)
        left = sum(n for key_id, n in usage.items() if key_id != vault.current_key_id)
        if left:  # a gateway sealed with the old key in the meantime: leave it readable
            console.print(f"{left} entries are still under an old key; run `plooto-api vault rewrap`")
            return 1
        if not keep_old:
            write_key_file(path, [new_key])
        console.print(f"{total} entries re-wrapped under key {vault.current_key_id}"
                      + ("" if keep_old else "; the old key was dropped"))  # fmt: skip
    finally:
        engine.dispose()
    return 0


def run_rewrap(settings: Settings, console: Console) -> int:
    """Re-wrap every entry under the current key (the last step of a rotation with environment keys)."""
    vault, engine, sessions = _open(settings)
    try:
        total = _rewrap(vault, sessions, console)
    finally:
        engine.dispose()
    console.print(f"{total} entries re-wrapped under key {vault.current_key_id}")
    return 0
