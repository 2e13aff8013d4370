"""`plooto-api vault rotate-key` / `rewrap` / `status`: every connection keeps working across a key
rotation, with no new login and so no new MFA (the sandbox's SMS outbox and our login count stay put)."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from plooto_api.cli.vault import run_rewrap, run_rotate_key, run_status
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.sessions import complete_mfa
from plooto_api.store.vault import Vault, VaultError, generate_key, read_key_file
from plooto_api.sync.engine import SyncEngine
from plooto_api.upstream import PortalSession
from security.conftest import CLERK, add_connection


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How many times any portal session signed in or answered MFA, in this process."""
    counts = {"login": 0, "mfa": 0}
    for name, key in (("_login", "login"), ("_complete_mfa", "mfa")):
        original = getattr(PortalSession, name)

        async def counted(self: PortalSession, *args: Any, _original: Any = original, _key: str = key) -> Any:
            counts[_key] += 1
            return await _original(self, *args)

        monkeypatch.setattr(PortalSession, name, counted)
    yield counts


def _sms_sent(sandbox: str) -> int:
    return len([m for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms"])


def _console() -> tuple[Any, io.StringIO]:
    from rich.console import Console

    out = io.StringIO()
    return Console(file=out, width=300), out


async def _connect_both(ctx: JobContext, sandbox: str) -> list[str]:
    """A TOTP login and an SMS login (its code read from the outbox), both synced once."""
    totp = add_connection(ctx)
    sms = add_connection(ctx, username=CLERK, totp_secret=None)
    assert (await SyncEngine(ctx).sync_connection(totp, cadence="fast")).ok
    assert (await SyncEngine(ctx).sync_connection(sms, cadence="fast")).state == "requires_action"
    code = [m for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms"][-1]["code"]
    await complete_mfa(ctx, sms, code, trust_device=True)
    assert (await SyncEngine(ctx).sync_connection(sms, cadence="fast")).ok
    return [totp, sms]


async def _sync_all(ctx: JobContext, connection_ids: list[str]) -> None:
    for connection_id in connection_ids:
        report = await SyncEngine(ctx).sync_connection(connection_id, cadence="fast")
        assert report.ok and report.state == "healthy", report


async def test_key_file_rotation_needs_no_restart_and_no_new_mfa(
    database_url: str, tmp_path: Path, sandbox: str, logins: dict[str, int]
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, upstream_url=sandbox)
    assert settings.vault_key is None  # the embedded default: a key file
    running = JobContext.from_settings(settings, migrate=False)  # a gateway that stays up throughout
    try:
        connections = await _connect_both(running, sandbox)
        key_file = tmp_path / "data" / "vault.key"
        (old_key,) = read_key_file(key_file)
        before = (dict(logins), _sms_sent(sandbox))

        console, out = _console()
        # The rotation runs while the running gateway syncs (and seals its session state).
        code, _ = await asyncio.gather(
            asyncio.to_thread(run_rotate_key, settings, console), _sync_all(running, connections)
        )
        assert code == 0, out.getvalue()
        assert "entries re-wrapped" in out.getvalue() and "old key was dropped" in out.getvalue()
        (new_key,) = read_key_file(key_file)  # the old key is gone from the file
        assert new_key != old_key and oct(key_file.stat().st_mode & 0o777) == "0o600"

        await _sync_all(running, connections)  # the running gateway keeps working
        restarted = JobContext.from_settings(settings, migrate=False)  # and a restart reads the new key
        try:
            await _sync_all(restarted, connections)
        finally:
            await restarted.aclose()
        assert (dict(logins), _sms_sent(sandbox)) == before  # no login, no TOTP code, no SMS

        with running.sessions() as session:
            assert running.vault.key_usage(session) == {running.vault.current_key_id: 4}
            with pytest.raises(VaultError, match="not configured"):  # the old key alone opens nothing
                Vault(old_key).open(session, connections[0], "credentials")
        console, out = _console()
        assert run_status(settings, console) == 0
        assert "current" in out.getvalue() and "4 entries" in out.getvalue()
    finally:
        await running.aclose()


async def test_environment_key_rotation_prints_the_steps_then_rewraps(
    database_url: str, tmp_path: Path, sandbox: str, logins: dict[str, int]
) -> None:
    old_key = generate_key()
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, upstream_url=sandbox,
                        vault_key=SecretStr(old_key))  # fmt: skip
    ctx = JobContext.from_settings(settings, migrate=False)
    try:
        connections = await _connect_both(ctx, sandbox)
    finally:
        await ctx.aclose()
    before = (dict(logins), _sms_sent(sandbox))

    console, out = _console()
    assert run_rotate_key(settings, console) == 0
    printed = out.getvalue()
    new_key = re.search(r"PLOOTO_API_VAULT_KEY='([^']+)'", printed).group(1)  # type: ignore[union-attr]
    assert old_key in printed and new_key != old_key
    rolled = settings.model_copy(
        update={"vault_key": SecretStr(new_key), "vault_previous_keys": [SecretStr(old_key)]}
    )
    console, out = _console()
    assert run_status(rolled, console) == 0
    assert re.search(r"previous \w+  4 entries", out.getvalue())
    assert run_rewrap(rolled, _console()[0]) == 0

    dropped = settings.model_copy(update={"vault_key": SecretStr(new_key)})  # the old key removed
    ctx = JobContext.from_settings(dropped, migrate=False)
    try:
        await _sync_all(ctx, connections)
    finally:
        await ctx.aclose()
    assert (dict(logins), _sms_sent(sandbox)) == before
    console, out = _console()
    assert run_status(settings, console) == 1  # a process still on the old key is told, loudly
    assert "MISSING" in out.getvalue()
