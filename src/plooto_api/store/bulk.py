"""Inserting many rows of one table at once (a sync page's objects, child rows and events).

Core's executemany rebuilds every row's parameters through its generic path (a dict per row with
every column, then each value through its type's processor): about a tenth of the instructions of
an initial sync on SQLite. On SQLite the rows are bound here by a plan made once per table and set
of keys (the SQL, the parameter order and each column's processor, all from SQLAlchemy itself), and
go to the driver's executemany. Rows that need what only Core does (a Python-side column default
for a column they lack) and other databases take Core's path.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class _Plan:
    sql: str
    keys: tuple[str, ...]  # the row keys, in the SQL's parameter order
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, processor) where one applies


_PLANS: weakref.WeakKeyDictionary[Dialect, dict[tuple[Table, tuple[str, ...]], _Plan | None]] = (
    weakref.WeakKeyDictionary()
)
_PLANS_LOCK = threading.Lock()


def _plan(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _Plan | None:
    """The bound form of INSERT INTO table (keys): None when Core must do it (a column outside
    `keys` takes a Python-side default)."""
    with _PLANS_LOCK:
        plans = _PLANS.setdefault(dialect, {})
        if (table, keys) in plans:
            return plans[(table, keys)]
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    order = compiled.positiontup or []
    plan: _Plan | None = None
    if compiled.positional and set(order) <= set(keys):
        processors = []
        for position, key in enumerate(order):
            processor = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors.append((position, processor))
        plan = _Plan(compiled.string, tuple(order), tuple(processors))
    with _PLANS_LOCK:
        plans[(table, keys)] = plan
    return plan


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
    dialect = connection.dialect
    plan = _plan(dialect, table, tuple(keys)) if dialect.name == "sqlite" else None
    if plan is None:
        connection.execute(insert(table), list(rows))
        return
    params = []
    for row in rows:
        values = [row[key] for key in plan.keys]
        for position, process in plan.processors:
            values[position] = process(values[position])
        params.append(tuple(values))
    connection.exec_driver_sql(plan.sql, params)
