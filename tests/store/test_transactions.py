"""Write transactions of one process queue for SQLite's single writer instead of polling for it, and
leave copying the write-ahead log into the database to a thread of their own."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from plooto_api.store.database import checkpointer_for, create_db_engine, session_factory, transaction


def test_concurrent_sqlite_writers_of_one_process_wait_their_turn(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'writers.db'}")

    @event.listens_for(engine, "connect")
    def _no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        # Without SQLite's busy handler a writer that meets a held write lock fails at once with
        # "database is locked": only the process's own queue can keep these writers apart.
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    sessions = session_factory(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer() -> None:
        start.wait()
        try:
            for _ in range(25):
                with transaction(sessions) as session:
                    n = session.execute(text("SELECT n FROM counter")).scalar_one()
                    session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 150  # no lost update
    finally:
        engine.dispose()


def test_a_failed_write_transaction_releases_the_queue(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'release.db'}")
    sessions = session_factory(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER NOT NULL)"))
    try:
        try:
            with transaction(sessions) as session:
                session.execute(text("INSERT INTO t VALUES (1)"))
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        done = threading.Event()

        def other_writer() -> None:
            with transaction(sessions) as session:
                session.execute(text("INSERT INTO t VALUES (2)"))
            done.set()

        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(timeout=30)
        assert done.is_set()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM t")).scalars().all() == [2]  # the failed one rolled back
    finally:
        engine.dispose()


def test_committed_writes_are_checkpointed_by_the_checkpointer_thread(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    engine = create_db_engine(f"sqlite:///{path}")
    sessions = session_factory(engine)
    checkpointer = checkpointer_for(engine)
    assert checkpointer is not None
    try:
        with engine.connect() as conn:
            # Writers would copy the WAL themselves only far past SQLite's default of 1,000 pages.
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 4000
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE blobs (b TEXT NOT NULL)"))
        assert not checkpointer.running  # nothing but transaction() wakes it
        for _ in range(20):
            with transaction(sessions) as session:
                session.execute(text("INSERT INTO blobs VALUES (:b)"), {"b": "x" * 20_000})
        assert checkpointer.running
        assert checkpointer.wait(checkpointer.nudge(), timeout=30)
        # The database file alone, without its WAL, now holds every committed row.
        alone = tmp_path / "alone.db"
        alone.write_bytes(path.read_bytes())
        copy = sqlite3.connect(alone)
        try:
            assert copy.execute("SELECT count(*) FROM blobs").fetchone() == (20,)
        finally:
            copy.close()
    finally:
        engine.dispose()
    assert not checkpointer.running  # disposing the engine ends the thread


def test_memory_and_server_databases_have_no_checkpointer() -> None:
    engine = create_db_engine("sqlite://")
    try:
        assert checkpointer_for(engine) is None
    finally:
        engine.dispose()
