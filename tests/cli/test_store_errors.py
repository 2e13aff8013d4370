"""The commands refuse a store that is not there, or cannot be opened, in one line and exit code 2,
without creating anything; and a second `serve` refuses a port or data directory in use."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PLOOTO_API_")} | (extra or {})


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=_env(env), capture_output=True, text=True, timeout=60)


def _one_line(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def _sqlite_store(tmp_path: Path) -> Path:
    data = tmp_path / "store"
    result = _run(tmp_path, "db", "upgrade", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    return data


@pytest.mark.parametrize(
    "args",
    [
        ["tokens", "create", "--scopes", "bills:read"],
        ["tokens", "list"],
        ["tokens", "revoke", "tok_nope"],
        ["connections", "list"],
        ["connections", "clear-drift", "conn_nope"],
        ["db", "status"],
        ["events", "replay", "--since", "1h"],
        ["events", "tail"],
        ["audit", "verify"],
        ["vault", "status"],
        ["sync"],
    ],
)
def test_a_data_dir_with_no_store_is_refused_and_left_alone(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo"
    result = _run(tmp_path, *args, "--data-dir", str(typo))
    _one_line(result, f"no gateway store at {typo} (run `plooto-api serve` or `plooto-api connect` first")
    assert not typo.exists()
    assert result.stdout == ""


def test_the_default_data_dir_is_not_created_either(tmp_path: Path) -> None:
    _one_line(_run(tmp_path, "tokens", "list"), "no gateway store at .plooto-api")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_with_something_else_in_it_is_no_store(tmp_path: Path) -> None:
    (tmp_path / "plooto-api.db").write_text("not a database")
    _one_line(_run(tmp_path, "audit", "verify", "--data-dir", str(tmp_path)), "no gateway store at")
    assert (tmp_path / "plooto-api.db").read_text() == "not a database"


def test_settings_that_cannot_open_a_store_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    dead = f"postgresql+psycopg://x@127.0.0.1:{free_port()}/db"
    for args, needle in (
        (["tokens", "list", "--data-dir", str(a_file)], f"data directory {a_file} is not a directory"),
        (["serve", "--port", "0", "--data-dir", str(a_file)], f"data directory {a_file} is not a directory"),
        (["db", "upgrade", "--data-dir", str(a_file)], f"data directory {a_file} is not a directory"),
        (["tokens", "list", "--data-dir", str(a_file / "nope")], f"no gateway store at {a_file / 'nope'}"),
        (
            ["serve", "--port", "0", "--data-dir", str(a_file / "nope")],
            f"cannot create the data directory {a_file / 'nope'}",
        ),
        (["audit", "verify", "--database-url", "bogus://"], "database_url bogus://: Can't load plugin"),
        (["tokens", "list", "--database-url", dead], f"cannot open the database {dead}: connection failed"),
        (["db", "upgrade", "--database-url", dead], f"cannot open the database {dead}: connection failed"),
        (["tokens", "list", "--data-dir", ""], "Invalid value for '--data-dir': must not be empty"),
        (["serve", "--data-dir", " "], "Invalid value for '--data-dir': must not be empty"),
    ):
        _one_line(_run(tmp_path, *args), needle)
    _one_line(
        _run(tmp_path, "tokens", "list", env={"PLOOTO_API_DATA_DIR": ""}),
        "data_dir (PLOOTO_API_DATA_DIR): must not be empty",
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["passwd"]


def test_durations_too_long_are_one_line(tmp_path: Path) -> None:
    data = _sqlite_store(tmp_path)
    for args, needle in (
        (["tokens", "create", "--scopes", "bills:read", "--expires-in", "99999999w"], "--expires-in '99999999w': too long"),
        (["tokens", "create", "--scopes", "bills:read", "--expires-in", "500000w"], "--expires-in '500000w': too long"),
        (["events", "replay", "--since", "99999999999d"], "--since '99999999999d': too far back"),
        (["events", "replay", "--since", "999999999d"], "--since '999999999d': too far back"),
    ):  # fmt: skip
        _one_line(_run(tmp_path, *args, "--data-dir", str(data)), needle)
    listed = _run(tmp_path, "tokens", "list", "--data-dir", str(data))
    assert listed.returncode == 0 and listed.stdout == "", listed  # no token was half-made


def test_tokens_list_shows_the_name(tmp_path: Path) -> None:
    data = _sqlite_store(tmp_path)
    for name in ("ci [bot]", None):
        extra = ["--name", name] if name else []
        created = _run(
            tmp_path, "tokens", "create", "--scopes", "bills:read", *extra, "--data-dir", str(data)
        )
        assert created.returncode == 0, created.stderr
    listed = _run(tmp_path, "tokens", "list", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    named, unnamed = listed.stdout.splitlines()
    assert "  name='ci [bot]'  scopes=bills:read" in named
    assert "name=" not in unnamed


def _serve(tmp_path: Path, port: int, data: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    # An upstream nothing listens on: no embedded sandbox, and nothing to sync at start.
    out = tmp_path / f"{name}.out"
    dead = f"http://127.0.0.1:{free_port()}"
    with out.open("w") as handle:
        proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), "--data-dir", str(data), "--upstream", dead],
            cwd=tmp_path, env=_env(), stdout=handle, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    return proc, out


def _wait_for_health(port: int, proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling for a child process to bind its port
    raise AssertionError(out.read_text())


def test_serve_refuses_a_port_in_use_before_touching_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        # The embedded sandbox (no --upstream) is the default that used to start, sync and then fail.
        result = _run(tmp_path, "serve", "--port", str(port), "--data-dir", str(data))
    _one_line(result, f"cannot listen on 127.0.0.1:{port}: already in use (pass another --port)")
    assert not data.exists()
    assert result.stdout == ""


def test_serve_refuses_a_data_dir_in_use_and_a_stale_lock_does_not_block(tmp_path: Path) -> None:
    data = _sqlite_store(tmp_path)
    (data / "serve.lock").write_text("12345\n")  # left by a `serve` that was killed: nobody holds it
    port, dead = free_port(), f"http://127.0.0.1:{free_port()}"
    first, out = _serve(tmp_path, port, data, "first")
    try:
        _wait_for_health(port, first, out)
        before = sorted(path.name for path in data.iterdir())
        # With --upstream, so that a `serve` that is not refused does not leave a sandbox running.
        again = _run(
            tmp_path, "serve", "--port", str(free_port()), "--data-dir", str(data), "--upstream", dead
        )
        _one_line(
            again,
            f"another `plooto-api serve` (pid {first.pid}) is already running on the data directory {data}",
        )
        same_port = _run(tmp_path, "serve", "--port", str(port), "--data-dir", str(tmp_path / "other"))
        _one_line(same_port, f"cannot listen on 127.0.0.1:{port}: already in use")
        assert not (tmp_path / "other").exists()
        assert sorted(path.name for path in data.iterdir()) == before
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200  # the first one is unharmed
    finally:
        first.send_signal(signal.SIGKILL)  # no clean exit: the kernel drops the lock
        first.wait(timeout=30)
    second, out = _serve(tmp_path, port, data, "second")
    try:
        _wait_for_health(port, second, out)
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0, out.read_text()
    assert "plooto-api stopped" in out.read_text()


def test_the_lock_is_an_os_lock_held_while_serving(tmp_path: Path) -> None:
    data = _sqlite_store(tmp_path)
    with (data / "serve.lock").open("a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _run(tmp_path, "serve", "--port", str(free_port()), "--data-dir", str(data),
                      "--upstream", f"http://127.0.0.1:{free_port()}")  # fmt: skip
    _one_line(result, f"is already running on the data directory {data}")
    assert not re.search(r"sandbox|token", result.stdout)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_the_embedded_sandbox_stops_when_serve_is_killed(tmp_path: Path) -> None:
    # kill -9 of `serve` left its sandbox running, holding its port and writing the state file the
    # next `serve`'s sandbox reads.
    port, data, out = free_port(), tmp_path / "data", tmp_path / "serve.out"
    with out.open("w") as handle:
        serve = subprocess.Popen([*CLI, "serve", "--port", str(port), "--data-dir", str(data)], cwd=tmp_path,
                                 env=_env(), stdout=handle, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for_health(port, serve, out)
        sandboxes = [
            pid
            for pid in _children(serve.pid)
            if b"plooto_sandbox" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(sandboxes) == 1, out.read_text()
    finally:
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(sandboxes[0]) and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for another process to notice and exit
    assert not _alive(sandboxes[0]), "the embedded sandbox outlived its gateway"
    assert (data / "sandbox" / "state.pickle").exists()  # it saved its state on the way out
