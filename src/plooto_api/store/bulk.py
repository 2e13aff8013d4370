"""Inserting many rows of one table at once (a sync page's objects, child rows and events), and
looking many rows up at once by their portal ids.

Core's executemany rebuilds every row's parameters through its generic path (a dict per row with
every column, then each value through its type's processor): about a tenth of the instructions of
an initial sync on SQLite. Here the rows are bound by a plan made once per table and set of keys
(the statement, the parameter order and each column's processor, all from SQLAlchemy itself):
- on SQLite they go in multi-row INSERT statements, up to 256 rows each. The driver lets go of the
  GIL for every step of a statement, and executemany steps once per row: each time, taking the GIL
  back waits for any other busy thread of the process to yield it (up to the 5 ms switch
  interval). Beside a thread that kept the GIL busy, an initial sync ran 29x slower than alone that
  way, and 8-9x slower with multi-row statements (`bench/bench_sync_busy.py`). The driver keeps the
  prepared forms (five per table): an initial sync's peak memory went from 126 to 137 MB;
- on PostgreSQL (psycopg) they go through COPY FROM STDIN, one stream per table, where
  executemany would send, and the server parse and plan, one INSERT per row (an initial sync on
  PostgreSQL spent most of its time waiting for those).
Rows that need what only Core does (a Python-side column default for a column they lack) and other
drivers take Core's path. Errors are raised as SQLAlchemy's, as Core's path raises them.

PostgreSQL's jsonb cannot hold a NUL character (the JSON escape `\\u0000`): JSON values copied there
go without their NULs (a sync's events carry each object's document, which may have some), where
SQLite keeps them.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from itertools import chain
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Table, insert, select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from plooto_api.store.database import json_dumps, jsonb_dumps


@dataclass(frozen=True)
class _Plan:
    sql: str
    copy: bool  # COPY FROM STDIN (PostgreSQL) rather than INSERT statements
    keys: tuple[str, ...]  # the row keys, in the SQL's parameter order
    values: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's values in that order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, processor) where one applies
    # Positions of date and time columns: their values repeat within a batch (a page's fetch time,
    # its events' time), so each distinct value is converted once per batch.
    repeating: frozenset[int] = frozenset()
    # SQLite: (rows, statement) for INSERTs of several rows at once, most rows first, down to one.
    statements: tuple[tuple[int, str], ...] = ()


_ROWS_PER_STATEMENT = (256, 64, 16, 4, 1)
# Bound parameters a SQLite statement may hold: 32,766 from SQLite 3.32, 999 before.
_SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


def _multi_row(sql: str, columns: int) -> tuple[tuple[int, str], ...]:
    """The forms of the one-row `INSERT ... VALUES (?, ...)` `sql` that insert several rows, by rows."""
    head, row = sql.rsplit(" VALUES ", 1)
    sizes = [size for size in _ROWS_PER_STATEMENT if size == 1 or size * columns <= _SQLITE_MAX_VARIABLES]
    return tuple((size, f"{head} VALUES {', '.join([row] * size)}") for size in sizes)


_PLANS: weakref.WeakKeyDictionary[Dialect, dict[tuple[Table, tuple[str, ...]], _Plan | None]] = (
    weakref.WeakKeyDictionary()
)
_PLANS_LOCK = threading.Lock()


def _plan(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _Plan | None:
    """How to insert rows of `keys` into `table`: None when Core must do it (another driver, or a
    column outside `keys` takes a Python-side default)."""
    with _PLANS_LOCK:
        plans = _PLANS.setdefault(dialect, {})
        if (table, keys) in plans:
            return plans[(table, keys)]
    plan: _Plan | None = None
    if dialect.name == "sqlite":
        compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup or [])
        if compiled.positional and set(order) <= set(keys):
            plan = _bound_plan(dialect, table, compiled.string, order, copy=False)
            plan = replace(plan, statements=_multi_row(plan.sql, len(order)))
    elif _psycopg(dialect):
        defaulted = [c for c in table.c if c.default is not None and not c.default.is_sequence]
        if all(column.key in keys for column in defaulted):
            quote = dialect.identifier_preparer
            columns = ", ".join(quote.quote(table.c[key].name) for key in keys)
            sql = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN"
            plan = _bound_plan(dialect, table, sql, keys, copy=True)
    with _PLANS_LOCK:
        plans[(table, keys)] = plan
    return plan


def _psycopg(dialect: Dialect) -> bool:
    """PostgreSQL through psycopg 3: the driver whose COPY and array parameters are used here."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def _bound_plan(dialect: Dialect, table: Table, sql: str, order: tuple[str, ...], *, copy: bool) -> _Plan:
    processors, repeating = [], set()
    for position, key in enumerate(order):
        processor: Callable[[Any], Any] | None = (
            table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
        )
        if processor is not None and copy and isinstance(table.c[key].type, JSON):
            processor = _jsonb_text(processor)
        if processor is not None:
            processors.append((position, processor))
            if _python_type(table.c[key].type) in (datetime, date):
                repeating.add(position)
    return _Plan(sql, copy, order, _values_of(order), tuple(processors), frozenset(repeating))


def _values_of(keys: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's values for `keys`, in their order, picked in one C call rather than a loop per row."""
    if len(keys) == 1:  # itemgetter gives the lone value itself, not a tuple of it
        key = keys[0]
        return lambda row: (row[key],)
    return itemgetter(*keys)


def _jsonb_text(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`process` (SQLAlchemy's JSON processor for psycopg, which wraps a value for psycopg to
    serialize) serializing the value itself, as psycopg would, and without NUL characters."""

    def bind(value: Any) -> Any:
        bound = process(value)
        return None if bound is None else jsonb_dumps(bound.obj)

    return bind


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts of column values, all with the same keys) into `table`, in the
    session's transaction."""
    if not rows:
        return
    keys = rows[0].keys()
    for row in rows:
        if row.keys() != keys:
            raise ValueError(f"rows for {table.name} differ in their columns: {sorted(keys ^ row.keys())}")
    connection = session.connection()
    plan = _plan(connection.dialect, table, tuple(keys))
    if plan is None:
        connection.execute(insert(table), list(rows))
        return
    params = [list(plan.values(row)) for row in rows]
    for position, process in plan.processors:
        if position in plan.repeating:
            converted: dict[Any, Any] = {}
            for values in params:
                value = values[position]
                if value in converted:
                    values[position] = converted[value]
                else:
                    values[position] = converted[value] = process(value)
        else:
            for values in params:
                values[position] = process(values[position])
    if plan.copy:
        _copy(connection, plan.sql, params)
        return
    start = 0
    for size, sql in plan.statements:
        while len(params) - start >= size:
            connection.exec_driver_sql(sql, tuple(chain.from_iterable(params[start : start + size])))
            start += size


def _copy(connection: Connection, sql: str, rows: list[list[Any]]) -> None:
    """COPY `rows` in with the connection's psycopg connection, in its transaction."""
    driver = connection.connection.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:
        # As Core raises it (IntegrityError for a duplicate key, and so on); the rows are not shown.
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc


def _python_type(column_type: Any) -> type | None:
    # A TypeDecorator's own python_type is `object` from SQLAlchemy 2.1 (it raised before): its
    # underlying type says what it holds (UTCDateTime: datetime).
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    try:
        return column_type.python_type
    except NotImplementedError:
        return None


IN_LIST_LIMIT = 500  # values per IN list: within every backend's limit on bound parameters


def ids_by_upstream_id(
    session: Session, table: Table, connection_id: str, upstream_ids: Sequence[str]
) -> dict[str, str]:
    """The gateway ids of the rows of `table` that mirror `upstream_ids` for a connection, by portal id
    (ids not in the store are left out).

    A sync looks up every page's ids, most of them absent during an initial sync. Core binds each id
    of an IN list as its own parameter, through its generic path (about 0.3 ms for a page's 200),
    and each length of list is a new statement for the server to plan. The ids go instead as one
    parameter, a JSON array on SQLite and an array on PostgreSQL, and the unique index on
    (connection_id, upstream_id) is searched with it, one probe per id.
    """
    return {upstream_id: row[0] for upstream_id, row in
            rows_by_upstream_id(session, table, connection_id, upstream_ids, ("id",)).items()}  # fmt: skip


def rows_by_upstream_id(
    session: Session, table: Table, connection_id: str, upstream_ids: Sequence[str], columns: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """`columns` of the rows of `table` that mirror `upstream_ids` for a connection, by portal id, as
    `ids_by_upstream_id` finds them. Values come as the driver gives them: text, numbers and NULL
    are what they are; dates and times are not converted."""
    if not upstream_ids:
        return {}
    connection = session.connection()
    dialect = connection.dialect
    quote = dialect.identifier_preparer
    name = quote.format_table(table)
    names = [quote.quote(table.c[column].name) for column in columns]
    if dialect.name == "sqlite":
        wanted = ", ".join(names)
        sql = (
            f"SELECT upstream_id, {wanted} FROM {name} "
            "WHERE connection_id = ? AND upstream_id IN (SELECT value FROM json_each(?))"
        )
        params: tuple[Any, ...] = (connection_id, json_dumps(list(upstream_ids)))
    elif _psycopg(dialect):
        # One index probe per id, whatever the table's statistics say: during a first sync they still
        # describe an empty table, and `upstream_id = ANY(...)` was then planned as a scan of every
        # row of the connection (LIMIT 1 keeps the subquery a per-id lookup).
        outer = ", ".join(f"found.{column}" for column in names)
        sql = (
            f"SELECT ids.upstream_id, {outer} FROM unnest(%s::text[]) AS ids(upstream_id) "
            f"CROSS JOIN LATERAL (SELECT {', '.join(names)} FROM {name} WHERE connection_id = %s "
            "AND upstream_id = ids.upstream_id LIMIT 1) AS found"
        )
        params = (list(upstream_ids), connection_id)
    else:
        return _rows_by_in_lists(connection, table, connection_id, list(upstream_ids), columns)
    return {row[0]: tuple(row[1:]) for row in connection.exec_driver_sql(sql, params)}


def _rows_by_in_lists(
    connection: Connection, table: Table, connection_id: str, ids: list[str], columns: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """`rows_by_upstream_id` through Core, one IN list per IN_LIST_LIMIT ids (other databases)."""
    found: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(ids), IN_LIST_LIMIT):
        stmt = select(table.c.upstream_id, *(table.c[column] for column in columns)).where(
            table.c.connection_id == connection_id,
            table.c.upstream_id.in_(ids[start : start + IN_LIST_LIMIT]),
        )
        found.update({row[0]: tuple(row[1:]) for row in connection.execute(stmt)})
    return found
