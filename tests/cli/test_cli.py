"""The `plooto-api` command as a user runs it: a real process, a real port."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from plooto_api.cli import main
from plooto_api.config import Settings
from plooto_api.jobs import JobContext
from plooto_api.runtime import GC_THRESHOLDS
from plooto_api.services.connections import change_state, create_connection
from plooto_api.services.demo import ensure_admin_token
from plooto_api.services.tokens import authenticate, revoke_token
from plooto_api.store.database import transaction
from plooto_api.store.models import Connection
from plooto_api.store.vault import generate_key

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(db_env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PLOOTO_API_")} | db_env


def _wait_for_health(url: str, proc: subprocess.Popen[str], timeout: float = 90.0) -> httpx.Response:
    # `serve` migrates, starts the embedded sandbox and syncs before it answers: on PostgreSQL, on a
    # machine busy with other test workers, that took over 30 s once.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            return httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)  # polling for a child process to bind its port, not waiting on logic
    raise AssertionError("gateway did not start")


def test_serve_answers_health_and_stops_cleanly(tmp_path: Path, process_database_env: dict[str, str]) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=_env(process_database_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        response = _wait_for_health(f"http://127.0.0.1:{port}/health", proc)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["info"]["title"] == "plooto-api"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/docs" in out
    if "PLOOTO_API_TEST_DATABASE_URL" not in os.environ:
        assert (tmp_path / "data" / "plooto-api.db").exists()


def test_default_data_dir_is_dot_plooto_api(tmp_path: Path, process_database_env: dict[str, str]) -> None:
    result = subprocess.run([*CLI, "db", "upgrade"], cwd=tmp_path, env=_env(process_database_env),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    if "PLOOTO_API_TEST_DATABASE_URL" not in os.environ:
        assert (tmp_path / ".plooto-api" / "plooto-api.db").exists()
    status = subprocess.run([*CLI, "db", "status"], cwd=tmp_path, env=_env(process_database_env),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "up to date" in status.stdout


def test_bad_input_exits_2_with_one_line(tmp_path: Path, process_database_env: dict[str, str]) -> None:
    # A store to look in: commands other than those that set one up refuse a place with none.
    upgraded = subprocess.run([*CLI, "db", "upgrade"], cwd=tmp_path, env=_env(process_database_env),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    vault_key = generate_key()
    for args, env, needle in (
        (["serve", "--port", "http"], {}, "--port"),
        (["no-such-command"], {}, "no-such-command"),
        (
            ["serve", "--port", "70000"],
            {},
            "port (on the command line): Input should be less than or equal to 65535",
        ),
        (["connections", "clear-drift", "conn_nope"], {}, "no connection conn_nope"),
        (
            ["connections", "list"],
            {"PLOOTO_API_UPSTREAM_INITIAL_RATE": "90"},
            "upstream_initial_rate (PLOOTO_API_UPSTREAM_INITIAL_RATE): Value error, 90 req/s is above upstream_max_rate",
        ),
    ):
        # A vault key set: else the first command to open the vault logs, on stderr, that it made a key file.
        env = {"PLOOTO_API_VAULT_KEY": vault_key} | env
        result = subprocess.run([*CLI, *args], cwd=tmp_path, env=_env(process_database_env) | env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_a_portal_out_of_reach_is_one_line_not_a_traceback(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    key, data = generate_key(), tmp_path / "data"
    env = _env(process_database_env) | {"PLOOTO_API_VAULT_KEY": key, "PLOOTO_PASSWORD": "pw"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args, "--data-dir", str(data)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    connect = run("connect", "--upstream", dead, "--username", "a@firm.test", "--no-sync")
    assert connect.returncode == 2, connect.stderr  # the URL is the user's to fix
    assert connect.stderr.strip() == (  # the network's reason, not only its exception's class
        "plooto-api: a@firm.test could not log in: could not reach the portal: ConnectError "
        "(All connection attempts failed)"
    )
    # A connection made while the portal was up (waiting for its SMS code), given it while the portal is down.
    database = process_database_env.get("PLOOTO_API_DATABASE_URL")
    ctx = JobContext.from_settings(Settings(data_dir=data, vault_key=SecretStr(key),
                                            **({"database_url": database} if database else {})))  # fmt: skip
    try:
        with transaction(ctx.sessions) as session:
            assert session.scalar(select(func.count()).select_from(Connection)) == 0  # connect kept nothing
            made = create_connection(
                session, ctx.vault, username="a@firm.test", password="pw", upstream_url=dead
            )
            change_state(session, made, "requires_action", reason="mfa", detail={"method": "sms"})
            connection_id = made.id
    finally:
        ctx.engine.dispose()
    answer = run("sync", "--connection", connection_id, "--mfa-code", "123456")
    assert answer.returncode == 1, answer.stderr
    assert answer.stderr.strip() == (
        "plooto-api: could not reach the portal: ConnectError (All connection attempts failed)"
    )


def test_every_command_collects_garbage_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process rather than a child: the threshold is the interpreter's, not something a
    # command prints. Restored afterwards so the rest of the suite runs with what it started with.
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    monkeypatch.setattr(sys, "argv", ["plooto-api", "--help"])
    try:
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 0
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_serve_with_a_real_portal_shows_no_token(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    # A token printed on every start would sit in a deployment's logs (systemd, docker): only the
    # embedded demo shows one.
    port = _free_port()
    env = _env(process_database_env) | {"PLOOTO_API_UPSTREAM_URL": f"http://127.0.0.1:{_free_port()}"}
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _wait_for_health(f"http://127.0.0.1:{port}/health", proc).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "papi_" not in out + err
    assert "plooto-api tokens create" in out


def test_the_demo_admin_token_is_not_made_again_once_revoked(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", vault_key=SecretStr(generate_key()))
    ctx = JobContext.from_settings(settings)
    try:
        token = ensure_admin_token(ctx)
        assert token is not None and ensure_admin_token(ctx) == token
        with transaction(ctx.sessions) as session:
            found = authenticate(session, token)
            assert found is not None
            revoke_token(session, found.token_id)
        assert ensure_admin_token(ctx) is None
    finally:
        ctx.engine.dispose()
