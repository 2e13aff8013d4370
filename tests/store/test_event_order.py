"""Events commit in the order of their `seq`, so a reader that pages by `seq` (`/events?after=`,
`plooto-api events tail`) never moves past one that commits later. On SQLite the single writer does
that; on PostgreSQL an advisory lock, held from a transaction's first event to its commit."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from plooto_api.services.events import EventBatch
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.models import Event
from support.postgres import wait_until_one_waits


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

    def second() -> None:
        with transaction(sessions) as session:
            batch = EventBatch(session)
            batch.add("bill.updated", data={"n": 2}, object_id="b")
            batch.flush()
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    try:
        wait_until_one_waits(engine, thread, wait_event="advisory")
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
