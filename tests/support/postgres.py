"""Watching another PostgreSQL session from a test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session


def wait_until_one_waits(engine: Engine, thread: threading.Thread, *, wait_event: str) -> None:
    """Return once a session of this database waits on a lock of kind `wait_event` (`advisory`, or
    `%` for any lock); fail if `thread`, the one expected to wait, ends first or 30 s go by.

    The watcher polls in autocommit: PostgreSQL keeps one snapshot of pg_stat_activity for a whole
    transaction, so polls inside one transaction begun before the wait would never see it."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND wait_event LIKE :event AND datname = current_database()"
    )
    deadline = time.monotonic() + 30
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
        while not watcher.execute(waiting, {"event": wait_event}).scalar_one():
            assert thread.is_alive(), "the thread expected to wait ended without waiting"
            assert time.monotonic() < deadline, "no transaction waited for the lock"
            time.sleep(0.01)  # polling another session's state, not waiting for time to pass


def race_behind(engine: Engine, first: Session, second: Callable[[], None], *, wait_event: str = "%") -> None:
    """The second of two transactions racing for one row: run `second` on a thread of its own until
    it waits on a lock of kind `wait_event` that `first` (a session in a transaction) holds, then
    commit and close `first`, and let `second` finish."""
    thread = threading.Thread(target=second)
    thread.start()
    try:
        wait_until_one_waits(engine, thread, wait_event=wait_event)
        first.commit()
    finally:
        first.close()
        thread.join(30)
