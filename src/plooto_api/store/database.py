"""Engines, sessions and schema migrations for SQLite (default, WAL mode) and PostgreSQL."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.store.types import RawJSON

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


# Writers leave copying the WAL into the database to WalCheckpointer's thread; they checkpoint
# themselves only past this many pages (16 MiB), should it ever fall behind.
_WRITER_CHECKPOINT_PAGES = 4000


# Python's sqlite3 binds int, float and str as they are and looks any other value up among its
# adapters: None, in none of them, cost two failed attribute lookups (each a formatted
# AttributeError) before it was bound as NULL, 2.6 k instructions, and a sync page binds thousands
# (1.8% of an initial sync's writing). Registered, it is found at once; still bound as NULL. (The
# driver's adapters are process-wide.)
sqlite3.register_adapter(type(None), lambda _: None)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; a busy timeout queues writers instead of
    # failing them; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
    cursor.close()


class WalCheckpointer:
    """Copies a SQLite database's write-ahead log back into the database file on its own thread.

    Left to SQLite, the writer whose commit takes the WAL past its threshold does that copy (and its
    fsyncs) inside the commit, so a bulk writer stalls every few megabytes. Here each committed write
    transaction wakes this thread, which runs a PASSIVE checkpoint on its own connection: it never
    waits for readers or writers, and SQLite does the work without Python's GIL, so it runs beside
    the next transaction. The thread starts at the first commit and ends when the engine is disposed.
    """

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).absolute())
        self._requested = 0  # nudges so far
        self._covered = 0  # the nudges the last finished checkpoint began after
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def nudge(self) -> int:
        """A write transaction committed: checkpoint soon. Nudges coalesce; the returned ticket is
        what `wait` takes to know a checkpoint begun after this nudge has finished."""
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
                self._thread.start()
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float) -> bool:
        """Block until a checkpoint begun after nudge `ticket` has finished (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._covered >= ticket, timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopped or self._requested > self._covered)
                    if self._stopped:
                        return
                    target = self._requested
                # Busy or gone: counted as done all the same; the next commit nudges again.
                with suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                with self._cond:
                    self._covered = target
                    self._cond.notify_all()
        finally:
            conn.close()


WRITE_TRANSACTION = {"plooto_write": True}


def _begin(conn: Any) -> None:
    # Write transactions take SQLite's write lock when they begin, not at their first write: one that
    # reads then writes could otherwise fail with "database is locked" instead of waiting its turn.
    # Reads begin deferred, so they never queue behind writers (WAL gives them a snapshot).
    write = conn.get_execution_options().get("plooto_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def json_dumps(value: Any) -> str:
    """JSON columns' serializer: orjson (a sync page writes thousands of JSON values), falling back
    to the standard library for what orjson refuses but `json` takes (integers beyond 64 bits).
    A RawJSON is serialized already and is stored as it is."""
    if type(value) is RawJSON:
        return str(value)  # a plain str, which the driver binds without looking for an adapter
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


# The escape of a NUL character in JSON text: `\u0000` after an even number of backslashes (an odd
# number escapes the backslash before `u0000`, which is then plain text).
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def jsonb_dumps(value: Any) -> str:
    """json_dumps for PostgreSQL's jsonb, which cannot hold a NUL character: the value without its
    NULs (portal text may have some; the served documents, in text columns, keep them)."""
    text = json_dumps(value)
    return _NUL_ESCAPE.sub(r"\1", text) if "\\u0000" in text else text


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for `url`, applying the settings each backend needs to be safe under load."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # The driver keeps 128 prepared statements per connection by default; a sync uses more (five
        # forms of multi-row INSERT per table, store/bulk.py), and re-preparing the evicted ones
        # cost 1.8% of an initial sync's instructions.
        engine = create_engine(
            url, echo=echo, json_serializer=json_dumps,
            connect_args={"check_same_thread": False, "isolation_level": None, "cached_statements": 512},
        )  # fmt: skip
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin)
        writing = _SQLITE_WRITING[engine] = _SqliteWriting()
        if database and database != ":memory:":
            checkpointer = writing.checkpointer = WalCheckpointer(database)
            event.listen(engine, "engine_disposed", lambda _engine: checkpointer.stop())
            weakref.finalize(engine, checkpointer.stop)
        return engine
    return create_engine(
        url, echo=echo, json_serializer=jsonb_dumps, pool_pre_ping=True, pool_size=10, max_overflow=20
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker whose objects stay readable after commit (the API serializes them then)."""
    return sessionmaker(engine, expire_on_commit=False)


@dataclass
class _SqliteWriting:
    """What the write transactions of one SQLite engine share in this process.

    SQLite has one writer at a time. Writers of this process queue on `lock`, which hands over the
    moment it is released; left to SQLite's busy handler they would poll, sleeping up to 100 ms
    between tries, while the write lock sits free. Other processes (a CLI beside the server) still
    wait in busy_timeout. `checkpointer` (file databases) is woken after each commit.
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    checkpointer: WalCheckpointer | None = None


_SQLITE_WRITING: weakref.WeakKeyDictionary[Engine, _SqliteWriting] = weakref.WeakKeyDictionary()


def checkpointer_for(engine: Engine) -> WalCheckpointer | None:
    """The WAL checkpointer of a SQLite file database's engine (None for other databases)."""
    writing = _SQLITE_WRITING.get(engine)
    return writing.checkpointer if writing is not None else None


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work that writes: commit if the block succeeds, roll back if it raises."""
    bind = factory.kw.get("bind")
    writing = _SQLITE_WRITING.get(bind) if isinstance(bind, Engine) else None
    with writing.lock if writing is not None else nullcontext(), factory() as session, session.begin():
        session.connection(execution_options=WRITE_TRANSACTION)  # SQLite: BEGIN IMMEDIATE
        yield session
    if writing is not None and writing.checkpointer is not None:
        writing.checkpointer.nudge()


def _alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema up to the newest migration (a no-op when it already is)."""
    command.upgrade(_alembic_config(engine), "head")


def current_revision(engine: Engine) -> str | None:
    """The migration revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest migration revision shipped with this version of the gateway."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()
