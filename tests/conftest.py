"""Shared fixtures: a migrated database on SQLite (default) or PostgreSQL.

Set PLOOTO_API_TEST_DATABASE_URL to a PostgreSQL database to run the same tests there (`.ci/run`
does). On PostgreSQL the schema is migrated once per run and tables are emptied between tests;
on SQLite each test gets its own copy of a freshly migrated file. Under pytest-xdist (`-n`) each
worker has a database of its own beside the one named (created and dropped by the worker).

The suite's sandbox allows 100 req/s, and gateways under test start at their top rate (50 req/s),
so that syncs are not paced by the throttle's learning from 10 req/s: that learning is tested on
its own (tests/upstream/test_throttle.py) and measured under bench/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.store.database import create_db_engine, session_factory, upgrade_to_head
from plooto_api.store.models import Base

POSTGRES_URL = os.environ.get("PLOOTO_API_TEST_DATABASE_URL")
SANDBOX_RATE = {"limit": 100, "burst": 200}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PLOOTO_API_UPSTREAM_INITIAL_RATE", "50")


def pytest_report_header() -> str:
    return f"database: {'postgresql' if POSTGRES_URL else 'sqlite'}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """The PostgreSQL database this process tests on, or None on SQLite."""
    if not POSTGRES_URL:
        yield None
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        yield POSTGRES_URL
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    name = f"{url.database}_{worker}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def _postgres_engine(postgres_url: str | None) -> Iterator[Engine | None]:
    if not postgres_url:
        yield None
        return
    engine = create_db_engine(postgres_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade_to_head(engine)
    engine.dispose()  # closing the last connection folds the WAL into the main file
    return path


@pytest.fixture
def database_url(_postgres_engine: Engine | None, _sqlite_template: Path, tmp_path: Path) -> str:
    """URL of an empty, migrated database for this test."""
    if _postgres_engine is not None:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with _postgres_engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        return _postgres_engine.url.render_as_string(hide_password=False)
    path = tmp_path / "plooto-api.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on this test's database."""
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory on this test's database."""
    return session_factory(engine)


# --- the real sandbox, over loopback -----------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that nothing is listening on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SANDBOX_SEED = {"seed": 7, "companies": 2, "billsPerCompany": 30}


@pytest.fixture(scope="session")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real plooto-sandbox process (`python -m plooto_sandbox`) for the whole run."""
    import subprocess
    import sys
    import time

    port = free_port()
    log_path = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    with log_path.open("w") as log:  # a file, not a pipe: a full pipe would block the sandbox
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "plooto_sandbox", "--port", str(port),
                "--seed", str(SANDBOX_SEED["seed"]), "--companies", str(SANDBOX_SEED["companies"]),
                "--bills-per-company", str(SANDBOX_SEED["billsPerCompany"]),
                "--rate-limit", str(SANDBOX_RATE["limit"]), "--rate-burst", str(SANDBOX_RATE["burst"]),
            ],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "plooto-sandbox listening on" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"sandbox did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)  # waiting for a child process to bind its port
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def sandbox(sandbox_url: str) -> str:
    """The sandbox, reset to its seed (clock, data, sessions, faults, rate limit) for this test."""
    import httpx

    with httpx.Client(base_url=sandbox_url, timeout=60) as client:
        client.delete("/__sandbox/faults").raise_for_status()
        client.post("/__sandbox/reset", json=SANDBOX_SEED).raise_for_status()
    return sandbox_url


@pytest.fixture
def process_database_env(postgres_url: str | None) -> Iterator[dict[str, str]]:
    """Environment for a gateway subprocess: a database of its own on PostgreSQL (the process keeps
    its own vault key, so it must not meet another test's sealed rows); nothing on SQLite, where the
    process keeps its database in its own data directory."""
    if postgres_url is None:
        yield {}
        return
    import secrets

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"{make_url(postgres_url).database}_p{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield {"PLOOTO_API_DATABASE_URL": make_url(postgres_url).set(database=name).render_as_string(False)}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
