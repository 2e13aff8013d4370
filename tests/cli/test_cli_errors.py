"""What the CLI says when something is wrong: logs on stderr with secrets redacted, one line and
exit code 2 for what the user can fix, checked before a password is asked for or a code is sent."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from rich.console import Console

from conftest import free_port
from plooto_api.api.routes.connections import ConnectionMfa
from plooto_api.cli import CliError
from plooto_api.cli.connections import _code_for, check_mfa_code
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.store.database import transaction
from plooto_api.store.vault import generate_key
from plooto_api.upstream import MfaChallenge

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]
PASSWORD = "sandbox-password"
CONTROLLER, CLERK = "controller@northwind-cpa.test", "clerk@northwind-cpa.test"
TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"


def _env(db_env: dict[str, str], **extra: str) -> dict[str, str]:
    drop = ("PLOOTO_API_", "PLOOTO_PASSWORD", "PLOOTO_TOTP_SECRET")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | db_env | extra


def _run(cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # stdin is not a terminal, as under a service manager, cron or CI.
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str], needle: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    return lines[0]


# --- logging -----------------------------------------------------------------------------------

# A command as a failing feed logs: an exception whose frames hold a portal cookie.
_FAILING_COMMAND = """
from plooto_api.cli import app, main
from plooto_api.log import get_logger

@app.command("fail-like-a-feed")
def fail_like_a_feed() -> None:
    cookie = "TRUSTED-DEVICE-COOKIE-VALUE"
    try:
        raise RuntimeError("the feed failed")
    except RuntimeError:
        get_logger("test").exception("feed_failed", cookies=[{"name": ".Plooto.TrustedDevice", "value": cookie}])
    print("result line")

main()
"""


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_every_command_logs_to_stderr_redacted_without_frames_locals(tmp_path: Path, fmt: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_COMMAND, "fail-like-a-feed"], cwd=tmp_path,
        env=_env({}, PLOOTO_API_LOG_FORMAT=fmt), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "result line\n"  # results only: the log is on stderr
    assert "TRUSTED-DEVICE-COOKIE-VALUE" not in result.stdout + result.stderr
    assert "feed_failed" in result.stderr and "RuntimeError: the feed failed" in result.stderr
    assert "cookie = " not in result.stderr and "locals" not in result.stderr.lower()
    if fmt == "json":
        assert json.loads(result.stderr.strip().splitlines()[-1])["event"] == "feed_failed"


def test_a_real_commands_log_lines_go_to_stderr(tmp_path: Path, process_database_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    assert (
        _run(tmp_path, ["db", "upgrade", "--data-dir", str(data)], _env(process_database_env)).returncode == 0
    )
    listed = _run(tmp_path, ["connections", "list", "--data-dir", str(data)], _env(process_database_env))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no connections yet; add one with `plooto-api connect`"
    assert "vault_key_file_created" in listed.stderr  # the vault made its key file: said on stderr


# --- one line, exit code 2 ---------------------------------------------------------------------


def test_a_wrong_vault_key_is_one_line(tmp_path: Path, process_database_env: dict[str, str]) -> None:
    data, database = tmp_path / "data", process_database_env.get("PLOOTO_API_DATABASE_URL")
    ctx = JobContext.from_settings(Settings(data_dir=data, vault_key=SecretStr(generate_key()),
                                            **({"database_url": database} if database else {})))  # fmt: skip
    try:
        with transaction(ctx.sessions) as session:
            create_connection(session, ctx.vault, username="a@firm.test", password="pw-not-to-be-shown",
                              upstream_url=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    finally:
        ctx.engine.dispose()
    other_key = _env(process_database_env, PLOOTO_API_VAULT_KEY=generate_key())
    result = _run(tmp_path, ["sync", "--data-dir", str(data)], other_key)
    line = _one_line(result, "which is not configured (set PLOOTO_API_VAULT_KEY")
    assert "Traceback" not in result.stdout + result.stderr and "pw-not-to-be-shown" not in line


def test_a_malformed_expected_head_is_a_typo_not_a_broken_chain(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    assert (
        _run(tmp_path, ["db", "upgrade", "--data-dir", str(data)], _env(process_database_env)).returncode == 0
    )
    result = _run(tmp_path, ["audit", "verify", "--expect-head", "zzz", "--data-dir", str(data)],
                  _env(process_database_env, PLOOTO_API_VAULT_KEY=generate_key()))  # fmt: skip
    _one_line(result, "--expect-head: not a head hash (64 hexadecimal characters")
    assert "broken" not in result.stdout + result.stderr


def test_no_password_without_a_terminal_is_said_before_anything_is_made(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    env = _env(process_database_env, PLOOTO_API_VAULT_KEY=generate_key())
    new = tmp_path / "new"
    connect = _run(tmp_path, ["connect", "--username", "a@firm.test", "--upstream",
                              f"http://127.0.0.1:{free_port()}", "--data-dir", str(new)], env)  # fmt: skip
    _one_line(connect, "no password: set PLOOTO_PASSWORD, or run in a terminal to be asked for it")
    assert not new.exists()
    data = tmp_path / "data"
    assert _run(tmp_path, ["db", "upgrade", "--data-dir", str(data)], env).returncode == 0
    # The connection is checked before a password is asked for: a password for nothing is not asked.
    _one_line(_run(tmp_path, ["connections", "set-password", "conn_nope", "--data-dir", str(data)], env),
              "no connection conn_nope")  # fmt: skip


@pytest.mark.parametrize("username", ["", "  ", "x" * 321])
def test_a_username_that_cannot_be_a_login_is_said_before_anything_is_sent(
    tmp_path: Path, process_database_env: dict[str, str], username: str
) -> None:
    # An empty one was sent to the portal, which refused it: "plooto-api:  could not log in".
    env = _env(process_database_env, PLOOTO_API_VAULT_KEY=generate_key(), PLOOTO_PASSWORD=PASSWORD)
    new = tmp_path / "new"
    connect = _run(tmp_path, ["connect", "--username", username, "--upstream", f"http://127.0.0.1:{free_port()}",
                              "--no-sync", "--data-dir", str(new)], env)  # fmt: skip
    _one_line(connect, "--username must be the Plooto login's e-mail")
    assert not new.exists()


def test_an_address_that_cannot_be_listened_on_is_one_line(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        sandbox = _run(tmp_path, ["sandbox", "--port", port], _env({}))
        assert sandbox.stdout == ""  # refused before the demo users are printed
        _one_line(sandbox, f"cannot listen on 127.0.0.1:{port}: already in use (pass another --port)")
        alone = subprocess.run([sys.executable, "-m", "plooto_sandbox", "--port", port], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert alone.stdout == ""
        _one_line(alone, f"plooto_sandbox: cannot listen on 127.0.0.1:{port}: already in use")
    # An address this machine does not have: the host is what to change, not the port.
    for args in (["sandbox"], ["serve", "--data-dir", str(tmp_path / "data")]):
        result = _run(tmp_path, [*args, "--host", "10.255.255.1", "--port", str(free_port())],
                      _env(process_database_env))  # fmt: skip
        line = _one_line(result, "cannot listen on 10.255.255.1:")
        assert "pass a --host" in line and "--port" not in line
        assert result.stdout == ""


# --- MFA codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["123456", "12345678", "abc", "", "12345", "123456789", "12 3456", "١٢٣٤٥٦"])
def test_an_mfa_code_is_checked_by_the_apis_rule(code: str) -> None:
    try:
        ConnectionMfa(code=code)
        api_accepts = True
    except ValidationError:
        api_accepts = False
    try:
        check_mfa_code(code, "--mfa-code")
        cli_accepts = True
    except CliError as exc:
        assert str(exc).startswith("--mfa-code: an MFA code is 6 to 8 digits")
        cli_accepts = False
    assert cli_accepts == api_accepts


def test_a_malformed_mfa_code_is_refused_before_anything_is_opened_or_sent(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    for code in ("abc", ""):
        result = _run(tmp_path, ["sync", "--mfa-code", code, "--data-dir", str(tmp_path / "none")],
                      _env(process_database_env))  # fmt: skip
        _one_line(result, "--mfa-code: an MFA code is 6 to 8 digits; nothing was sent to the portal")


def test_a_code_asked_for_at_the_terminal_says_what_it_is_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet = Console(file=io.StringIO())
    with pytest.raises(CliError) as totp:  # nothing is sent: it is read from an authenticator app
        _code_for(quiet, "conn_1", MfaChallenge(method="totp"))
    assert str(totp.value).startswith("the portal asks for a TOTP code from an authenticator app; run ")
    assert "sent" not in str(totp.value)
    with pytest.raises(
        CliError, match=r"^the portal asks for an SMS code; run `plooto-api sync --connection conn_1"
    ):
        _code_for(quiet, "conn_1", MfaChallenge(method="sms"))

    terminal = Console(file=io.StringIO(), force_interactive=True)
    typed = iter(["abc", " 654321\n"])
    monkeypatch.setattr(terminal, "input", lambda _prompt: next(typed))
    with pytest.raises(CliError) as malformed:
        _code_for(terminal, "conn_1", MfaChallenge(method="sms"))
    assert "6 to 8 digits" in str(malformed.value) and "--mfa-code CODE" in str(malformed.value)
    assert _code_for(terminal, "conn_1", MfaChallenge(method="sms")) == "654321"


def test_an_sms_login_without_a_terminal_says_how_to_go_on_and_refused_codes_count(
    tmp_path: Path, sandbox: str, process_database_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    env = _env(process_database_env, PLOOTO_API_VAULT_KEY=generate_key(), PLOOTO_PASSWORD=PASSWORD)
    connect = _run(
        tmp_path, ["connect", "--username", CLERK, "--upstream", sandbox, "--data-dir", str(data)], env
    )
    line = _one_line(connect, "the portal asks for an SMS code; run `plooto-api sync --connection conn_")
    connection_id = re.search(r"--connection (\S+)", line).group(1)  # type: ignore[union-attr]
    sms = [m for m in httpx.get(f"{sandbox}/__sandbox/outbox").json() if m["kind"] == "Sms"]
    wrong = "000000" if sms[-1]["code"] != "000000" else "111111"

    def sync(*args: str) -> subprocess.CompletedProcess[str]:
        return _run(tmp_path, ["sync", "--connection", connection_id, *args, "--data-dir", str(data)], env)

    waiting = sync()  # a sync without the code says how to give it
    assert waiting.returncode == 1
    assert (
        f"give the code with `plooto-api sync --connection {connection_id} --mfa-code CODE`" in waiting.stdout
    )
    refused = sync("--mfa-code", wrong)
    _one_line(refused, "counts toward its lockout of the account); give the right one with `plooto-api sync")
    done = sync("--mfa-code", sms[-1]["code"])
    assert done.returncode == 0, done.stdout + done.stderr
    # Output that is not a terminal gets one line per feed pulled: company, feed, count.
    assert re.search(r"^\S.*  bills  \d+$", done.stdout, re.MULTILINE), done.stdout
    assert PASSWORD not in done.stdout + done.stderr


# --- wording -----------------------------------------------------------------------------------


def test_help_and_usage_read_as_meant(tmp_path: Path) -> None:
    bare = _run(tmp_path, [], _env({}))
    assert bare.returncode == 2 and bare.stderr.startswith("Usage: ")  # not "plooto-api: Usage:"
    for args in (["connect", "--help"], ["connections", "set-password", "--help"]):
        helped = _run(tmp_path, args, _env({}, COLUMNS="200"))
        assert helped.returncode == 0
        assert helped.stdout.count("PLOOTO_TOTP_SECRET") == 1, helped.stdout


@pytest.mark.parametrize("bind", ["gateway", "sandbox"])
def test_listening_sockets_answer_without_delayed_acks(bind: str) -> None:
    # A socket made with protocol 0 and handed to uvicorn left asyncio's TCP_NODELAY off on every
    # connection: each small answer waited ~40 ms for a delayed ACK (an incremental sync's six
    # requests took 350 ms instead of 110).
    import asyncio
    import socket

    from plooto_api.cli.serve import _bind
    from plooto_sandbox.__main__ import _listen

    listener = (_bind if bind == "gateway" else _listen)("127.0.0.1", 0)
    listener.listen()
    port = listener.getsockname()[1]

    async def accepted_nodelay() -> int:
        options: list[int] = []

        def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            options.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(serve, sock=listener)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not options:
            await asyncio.sleep(0.01)  # the server's callback runs on this loop
        writer.close()
        server.close()
        await server.wait_closed()
        return options[0]

    assert asyncio.run(accepted_nodelay()) != 0
