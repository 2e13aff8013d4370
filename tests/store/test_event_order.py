"""Events commit in the order of their `seq`, so a reader that pages by `seq` (`/events?after=`,
`plooto-api events tail`) never moves past one that commits later. On SQLite the single writer does
that; on PostgreSQL an advisory lock, held from a transaction's first event to its commit."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text

from plooto_api.services.events import EventBatch
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.models import Event


def test_a_later_transactions_events_wait_for_an_earlier_one_to_commit(database_url: str) -> None:
    engine = create_db_engine(database_url)
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: its transactions cannot interleave")
    sessions = session_factory(engine)
    first = sessions()
    first.begin()
    EventBatch(first).add("bill.updated", data={"n": 1}, object_id="a")
    EventBatch(first).flush()
    batch = EventBatch(first)
    batch.add("bill.updated", data={"n": 1}, object_id="a")
    batch.flush()  # inserted (its seq taken), not committed

    done = threading.Event()
    failures: list[BaseException] = []

    def second() -> None:
        try:
            with transaction(sessions) as session:
                batch = EventBatch(session)
                batch.add("bill.updated", data={"n": 2}, object_id="b")
                batch.flush()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
            raise
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        # Autocommit: PostgreSQL keeps one snapshot of pg_stat_activity for a whole transaction, so
        # polls in one transaction begun before the wait would never see it.
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event = 'advisory' AND datname = current_database()"
        )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            while not watcher.execute(waiting).scalar_one():
                assert not failures, f"the second transaction failed: {failures[0]!r}"
                assert time.monotonic() < deadline, "the second transaction never waited for the first"
                time.sleep(0.01)  # polling another session's state, not waiting for time to pass
        assert not done.is_set()  # it waits for the first to commit, not only for its own insert
        first.commit()
    finally:
        first.close()
        thread.join(30)
    assert done.is_set()
    with sessions() as session:
        order = [e.object_id for e in session.scalars(select(Event).order_by(Event.seq))]
    assert order == ["a", "b"]
    engine.dispose()
