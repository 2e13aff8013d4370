"""insert_rows stores exactly what Core's executemany stores, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import Table, event, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.store.bulk import _plan, insert_rows
from plooto_api.store.database import transaction
from plooto_api.store.models import Event
from plooto_api.store.types import RawJSON

EVENTS = cast(Table, Event.__table__)
WHEN = datetime(2026, 11, 27, 23, 5, 1, 250, tzinfo=timezone(timedelta(hours=-5)))


def _rows(prefix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}_1", "type": "bill.created", "connection_id": "con_1", "company_id": None,
         "object_type": "bill", "object_id": "bil_1", "data": {"total": "10.50", "lines": [1, None]},
         "created_at": WHEN},
        {"id": f"{prefix}_2", "type": "bill.created", "connection_id": "con_1", "company_id": "cmp_1",
         "object_type": "bill", "object_id": "bil_2", "data": RawJSON('{"total":"0.01","memo":"é"}'),
         "created_at": WHEN.astimezone(UTC).replace(microsecond=0)},
        {"id": f"{prefix}_3", "type": "bill.updated", "connection_id": "con_1", "company_id": "cmp_1",
         "object_type": "bill", "object_id": "bil_1", "data": {}, "created_at": WHEN},  # a time met again
        # What COPY's text format escapes: tabs, newlines, backslashes (and \N, its NULL).
        {"id": f"{prefix}_4", "type": "bill.updated", "connection_id": "con_1", "company_id": "\\N",
         "object_type": "bill", "object_id": 'bil_\t"x"\\y\nz', "data": {"memo": "a\tb\\c\nd"},
         "created_at": WHEN},
    ]  # fmt: skip


def _stored(session: Session, prefix: str) -> list[tuple[Any, ...]]:
    rows = session.execute(
        select(Event.type, Event.connection_id, Event.company_id, Event.object_type, Event.object_id,
               Event.data, Event.created_at).where(Event.id.like(f"{prefix}_%")).order_by(Event.id)
    )  # fmt: skip
    return [tuple(row) for row in rows]


def test_rows_read_back_as_core_inserts_them(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        session.execute(insert(EVENTS), _rows("core"))
        insert_rows(session, EVENTS, _rows("bulk"))
    with sessions() as session:
        core, bulk = _stored(session, "core"), _stored(session, "bulk")
        assert bulk == core
        assert bulk[0][5] == {"total": "10.50", "lines": [1, None]}
        assert bulk[1][5] == {"total": "0.01", "memo": "é"}  # RawJSON stored as the object, not a string
        assert bulk[0][6] == WHEN and bulk[0][6].tzinfo == UTC
        assert bulk[2][6] == WHEN and bulk[1][6] == WHEN.replace(microsecond=0)
        assert bulk[3][2:5] == ("\\N", "bill", 'bil_\t"x"\\y\nz') and bulk[3][5] == {"memo": "a\tb\\c\nd"}
        if session.get_bind().dialect.name == "sqlite":  # the very same text in the file
            raw = session.execute(text("SELECT id, created_at, data FROM events ORDER BY id")).all()
            by_id = {row[0]: row[1:] for row in raw}
            assert all(by_id[f"bulk_{n}"] == by_id[f"core_{n}"] for n in (1, 2, 3, 4))


def test_each_distinct_time_is_converted_once_per_call(sessions: sessionmaker[Session]) -> None:
    # A page's rows share their fetch and update times, and its events one creation time.
    with sessions() as session:
        plan = _plan(session.connection().dialect, EVENTS, tuple(_rows("plan")[0]))
    if plan is not None:
        assert plan.keys.index("created_at") in plan.repeating


def test_a_missing_column_with_a_python_default_gets_it(sessions: sessionmaker[Session]) -> None:
    rows = [{key: value for key, value in row.items() if key != "data"} for row in _rows("dflt")]
    with transaction(sessions) as session:
        insert_rows(session, EVENTS, rows)
    with sessions() as session:
        assert [row[5] for row in _stored(session, "dflt")] == [{}, {}, {}, {}]


def test_rows_that_differ_in_their_columns_are_refused_whole(sessions: sessionmaker[Session]) -> None:
    rows = _rows("bad")
    del rows[1]["company_id"]
    with pytest.raises(ValueError, match="differ in their columns"), transaction(sessions) as session:
        insert_rows(session, EVENTS, rows)
    with sessions() as session:
        assert _stored(session, "bad") == []


def test_no_rows_is_a_no_op(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        insert_rows(session, EVENTS, [])
    with sessions() as session:
        assert session.scalar(select(Event.seq).limit(1)) is None


def test_a_duplicate_key_raises_as_core_raises_it_and_writes_nothing(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        insert_rows(session, EVENTS, _rows("dup")[:1])
    rows = _rows("dup")  # the first is stored already
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        insert_rows(session, EVENTS, rows[1:] + rows[:1])
    with sessions() as session:
        assert [row[4] for row in _stored(session, "dup")] == ["bil_1"]
    # The session's connection is usable again after the rollback.
    with transaction(sessions) as session:
        insert_rows(session, EVENTS, rows[1:])
    with sessions() as session:
        assert len(_stored(session, "dup")) == 4


def test_many_rows_go_in_few_statements_in_their_order(sessions: sessionmaker[Session]) -> None:
    # 341 rows = 256 + 64 + 16 + 4 + 1: each multi-row statement once, and the one-row one.
    rows = [{**_rows("many")[0], "id": f"many_{n:04d}", "object_id": f"bil_{n}"} for n in range(341)]
    statements: list[tuple[str, bool]] = []

    def record(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if statement.startswith("INSERT INTO events"):
            statements.append((statement, executemany))

    with transaction(sessions) as session:
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", record)
        try:
            insert_rows(session, EVENTS, rows)
        finally:
            event.remove(engine, "before_cursor_execute", record)
    with sessions() as session:
        stored = session.scalars(select(Event.object_id).where(Event.id.like("many_%")).order_by(Event.seq))
        assert list(stored) == [f"bil_{n}" for n in range(341)]  # seq follows the rows' order
    if engine.dialect.name == "sqlite":
        # Not an executemany, which steps (and lets go of the GIL) once per row.
        assert [(statement.count("), ("), many) for statement, many in statements] == [
            (255, False),
            (63, False),
            (15, False),
            (3, False),
            (0, False),
        ]
