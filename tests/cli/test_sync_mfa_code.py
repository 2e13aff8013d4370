"""`plooto-api sync --mfa-code`, against the real sandbox: a code goes only to the connection
waiting for it, and nothing is sent to the portal for a connection that waits for none (a refused
password sent again is how a gateway locks an account)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from rich.console import Console
from sqlalchemy import func, select

from plooto_api.cli import CliError
from plooto_api.cli.connections import run_sync
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.store.vault import generate_key
from support.connections import connect_and_sync

CONTROLLER, CLERK = "controller@northwind-cpa.test", "clerk@northwind-cpa.test"
PASSWORD = "sandbox-password"
WRONG_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # valid base32, not the controller's


@pytest.fixture
def settings(database_url: str, tmp_path: Path, sandbox: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, upstream_url=sandbox,
                    vault_key=SecretStr(generate_key()))  # fmt: skip


@pytest.fixture
def control(sandbox: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=30) as client:
        yield client


def _connect(settings: Settings, username: str, *, password: str = PASSWORD, totp_secret: str | None) -> str:
    return connect_and_sync(settings, username, password=password, totp_secret=totp_secret)


def _state(settings: Settings, connection_id: str) -> tuple[str, str | None, dict[str, Any] | None, int]:
    """The connection's state, reason, detail and how many events it has."""
    ctx = JobContext.from_settings(settings, migrate=False)
    try:
        with ctx.sessions() as session:
            row = session.get(models.Connection, connection_id)
            assert row is not None
            events = session.scalar(
                select(func.count())
                .select_from(models.Event)
                .where(models.Event.connection_id == connection_id)
            )
            return row.state, row.state_reason, row.state_detail, int(events or 0)
    finally:
        ctx.engine.dispose()


def _counter(control: httpx.Client, path: str) -> Callable[[], int]:
    """A fault that changes nothing (no latency) but counts every POST to `path`: each POST /login
    sends the password, each POST /mfa a code."""
    fault = {"kind": "latency", "latencyMs": 0, "method": "POST", "pathPattern": f"^{path}$"}
    response = control.post("/faults", json=fault)
    response.raise_for_status()
    fault_id = response.json()["faultId"]
    return lambda: int(next(f for f in control.get("/faults").json() if f["faultId"] == fault_id)["hits"])


def _sms_code(control: httpx.Client) -> str:
    return str([m for m in control.get("/outbox").json() if m["kind"] == "Sms"][-1]["code"])


def _sync(settings: Settings, *, connection_id: str | None, code: str) -> int:
    console = Console(file=io.StringIO())
    return run_sync(settings, console, connection_id=connection_id, cadence="fast", mfa_code=code)


def test_a_code_for_a_connection_whose_password_was_refused_sends_nothing(
    settings: Settings, control: httpx.Client
) -> None:
    connection_id = _connect(settings, CONTROLLER, password="ctrl-wrong-2", totp_secret=None)
    before = _state(settings, connection_id)
    assert before[:2] == ("requires_action", "password")
    logins, codes = _counter(control, "/login"), _counter(control, "/mfa")

    for given in (None, connection_id):  # without --connection, and naming it
        with pytest.raises(CliError) as refused:
            _sync(settings, connection_id=given, code="123456")
        message = str(refused.value)
        assert "\n" not in message and "nothing was sent to the portal" in message
        assert logins() == 0 and codes() == 0, message  # the refused password is not sent again
        assert _state(settings, connection_id) == before
    assert f"{connection_id} is requires_action (password); it is not waiting for an MFA code" in message
    assert "waiting for a new password" in message


def test_a_code_without_a_connection_goes_only_to_the_one_waiting_for_it(
    settings: Settings, control: httpx.Client
) -> None:
    # The controller's stored TOTP secret was refused: it waits for a new secret, not for a code.
    controller = _connect(settings, CONTROLLER, totp_secret=WRONG_TOTP_SECRET)
    refused_secret = _state(settings, controller)
    assert refused_secret[:2] == ("requires_action", "mfa")
    assert (refused_secret[2] or {}).get("error") == "code_refused"
    clerk = _connect(settings, CLERK, totp_secret=None)  # waits for the SMS the portal sent
    assert _state(settings, clerk)[:3] == ("requires_action", "mfa", {"method": "sms"})
    logins, codes = _counter(control, "/login"), _counter(control, "/mfa")

    # The clerk's code is given once, to the clerk's sign-in; every connection then syncs.
    assert _sync(settings, connection_id=None, code=_sms_code(control)) == 1  # the controller's sync fails
    assert codes() == 1 and logins() == 0
    assert _state(settings, clerk)[0] == "healthy"
    assert _state(settings, controller)[:3] == refused_secret[:3]

    # Naming a connection that waits for no code sends nothing either.
    for connection_id, why in ((controller, "waiting for a new TOTP secret"), (clerk, "is healthy")):
        with pytest.raises(CliError, match=why) as named:
            _sync(settings, connection_id=connection_id, code="123456")
        assert "not waiting for an MFA code" in str(named.value) and "\n" not in str(named.value)
    assert codes() == 1 and logins() == 0


def test_a_code_without_a_connection_when_several_wait_names_them_and_sends_nothing(
    settings: Settings, control: httpx.Client
) -> None:
    waiting = sorted(
        [_connect(settings, CLERK, totp_secret=None), _connect(settings, CONTROLLER, totp_secret=None)]
    )
    for connection_id in waiting:  # the controller without its TOTP secret waits for a code from the app
        assert _state(settings, connection_id)[:2] == ("requires_action", "mfa")
    logins, codes = _counter(control, "/login"), _counter(control, "/mfa")
    with pytest.raises(CliError) as several:
        _sync(settings, connection_id=None, code=_sms_code(control))
    message = str(several.value)
    assert message.startswith("2 connections are waiting for an MFA code: ") and "\n" not in message
    assert all(connection_id in message for connection_id in waiting) and CLERK in message
    assert "pick the one the code is for with --connection ID" in message
    assert codes() == 0 and logins() == 0
    assert [_state(settings, c)[:2] for c in waiting] == [("requires_action", "mfa")] * 2


def test_the_command_says_so_in_one_line_with_exit_code_2_when_no_connection_waits(
    settings: Settings, control: httpx.Client, tmp_path: Path
) -> None:
    connection_id = _connect(settings, CONTROLLER, password="ctrl-wrong-2", totp_secret=None)
    logins = _counter(control, "/login")
    assert settings.vault_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOOTO_API_", "PLOOTO_PASSWORD"))}
    env |= {"PLOOTO_API_VAULT_KEY": settings.vault_key.get_secret_value()}
    result = subprocess.run(
        [sys.executable, "-c", "from plooto_api.cli import main; main()", "sync", "--mfa-code", "123456",
         "--data-dir", str(settings.data_dir), "--database-url", settings.resolved_database_url],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        "plooto-api: no connection is waiting for an MFA code (see `plooto-api connections list`); "
        "nothing was sent to the portal"
    ]
    assert logins() == 0 and _state(settings, connection_id)[:2] == ("requires_action", "password")


@pytest.mark.parametrize(
    ("password", "totp_secret", "hint"),
    [
        ("not-the-password", None, "plooto-api connections set-password {id}`"),
        (PASSWORD, WRONG_TOTP_SECRET, "plooto-api connections set-password {id} --totp-secret SECRET`"),
    ],
)
def test_a_sync_stopped_for_a_person_says_the_command_that_moves_it_on(
    settings: Settings, password: str, totp_secret: str | None, hint: str
) -> None:
    connection_id = _connect(settings, CONTROLLER, password=password, totp_secret=totp_secret)
    out = io.StringIO()
    assert run_sync(settings, Console(file=out, width=300), connection_id=connection_id, cadence="fast",
                    mfa_code=None) == 1  # fmt: skip
    assert hint.format(id=connection_id) in out.getvalue(), out.getvalue()
