"""Where an initial sync's store writes go: the gateway's write path against SQLite's own work.

bench_sync's figures say the gateway's CPU bounds an initial sync at the sandbox's 25 req/s. This
says how much of the per-object time a leaner or compiled write path could ever remove: the part
that is SQLite itself.

1. Syncs once from a sandbox with no practical limit, keeping every page's records.
2. On a fresh store (companies synced), writes those pages again through the sync engine's own
   write path (`SyncEngine._write_page`: upserts, events, cursor, one transaction per page), in this
   thread with nothing else running, recording every SQL statement and its bound parameters.
3. Sends the same statements with the same parameters to a copy of the store taken before step 2,
   straight through Python's sqlite3 module (no SQLAlchemy, no gateway code): the time SQLite takes
   to run them, to commit the pages, and to checkpoint the write-ahead log into the database (which
   the gateway does on its own thread). That is the floor under any write path that writes the
   same rows and indexes.

SQLite only (the default store). Prints one figure per line: `name value unit`.

    .venv/bin/python bench/bench_sync_store.py [--bills 5000] [--rate 25]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench_sync import _context, sandbox
from plooto_api.sync.engine import SyncEngine, SyncReport
from plooto_api.sync.upsert import ApplyCounts
from plooto_api.upstream import ThrottleConfig

_Page = tuple[str, Any, list[Any], dict[str, Any]]  # company, feed, records, cursor state


class _Keeping(SyncEngine):
    """Syncs as usual and keeps each page it wrote."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.pages: list[_Page] = []

    def _write_page(self, connection_id: str, company_upstream_id: str, feed: Any, records: list[Any],
                    state: dict[str, Any], absent: Any = None, news: Any = None) -> ApplyCounts:  # fmt: skip
        counts = super()._write_page(connection_id, company_upstream_id, feed, records, state, absent, news)
        self.pages.append((company_upstream_id, feed, records, state))  # as written
        return counts


async def _pages(url: str) -> tuple[list[_Page], int]:
    """Every page an initial sync writes, and the requests it took."""
    async with _context(url, ThrottleConfig().max_rate) as (ctx, connection_id):
        engine = _Keeping(ctx)
        assert (await engine.sync_connection(connection_id)).ok
        return engine.pages, (await ctx.portals.get(connection_id)).stats.requests


Statement = tuple[str, Any, bool]  # SQL, parameters, executemany


async def _write_path(url: str, pages: list[_Page], snapshot: Path) -> tuple[int, float, list[Statement]]:
    """(objects, seconds, statements) of writing `pages` through the sync engine's write path; the
    store as it was before (companies only) is copied to `snapshot`."""
    async with _context(url, ThrottleConfig().max_rate) as (ctx, connection_id):
        engine = SyncEngine(ctx)
        portal = await ctx.portals.get(connection_id)
        await portal.ensure_logged_in()
        await engine._sync_companies(portal, connection_id, SyncReport(connection_id, "all"))
        database = ctx.engine.url.database
        assert ctx.engine.dialect.name == "sqlite" and database
        source, copy = sqlite3.connect(database), sqlite3.connect(snapshot)
        source.backup(copy)  # what is committed, write-ahead log included
        source.close()
        copy.close()
        statements: list[Statement] = []

        def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
            statements.append((sql, params, many))

        event.listen(ctx.engine, "before_cursor_execute", record)
        objects = 0
        started = time.perf_counter()
        for company, feed, records, state in pages:
            objects += engine._write_page(connection_id, company, feed, records, state).created
            statements.append(("COMMIT", None, False))  # the driver's commit is not a statement
        seconds = time.perf_counter() - started
        event.remove(ctx.engine, "before_cursor_execute", record)
    return objects, seconds, statements


def _replay(snapshot: Path, statements: list[Statement]) -> dict[str, float]:
    """Seconds SQLite takes for `statements`, by kind: statements, commits, checkpoint."""
    db = sqlite3.connect(snapshot, isolation_level=None)
    # As the gateway's connections (store/database.py), with the checkpoint left for the end, as the
    # gateway leaves it to its own thread.
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0"):
        db.execute(f"PRAGMA {pragma}")
    seconds: defaultdict[str, float] = defaultdict(float)
    db.execute("BEGIN")
    for sql, params, many in statements:
        started = time.perf_counter()
        if sql == "COMMIT":
            db.execute("COMMIT")
            seconds["commits"] += time.perf_counter() - started
            db.execute("BEGIN")
            continue
        if sql.lstrip().upper().startswith(("BEGIN", "SAVEPOINT", "RELEASE")):
            continue
        cursor = db.executemany(sql, params) if many else db.execute(sql, params or ())
        cursor.fetchall()
        seconds["statements"] += time.perf_counter() - started
    db.execute("COMMIT")
    started = time.perf_counter()
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    seconds["checkpoint"] += time.perf_counter() - started
    db.close()
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--bills", type=int, default=5000, help="bills per company (2 companies), as bench_sync"
    )
    parser.add_argument("--rate", type=float, default=25.0, help="the portal limit to compare with, req/s")
    args = parser.parse_args()
    with sandbox(2, args.bills, 100_000, 100_000) as url, tempfile.TemporaryDirectory() as tmp:
        pages, requests = await _pages(url)
        snapshot = Path(tmp) / "before.db"
        objects, seconds, statements = await _write_path(url, pages, snapshot)
        sqlite = _replay(snapshot, statements)
    per_object = 1e6 / objects
    print(f"store_objects {objects} count")
    print(f"write_path_us_per_object {seconds * per_object:.0f} us")
    for kind in ("statements", "commits", "checkpoint"):
        print(f"sqlite_{kind}_us_per_object {sqlite[kind] * per_object:.0f} us")
    print(f"sqlite_us_per_object {sum(sqlite.values()) * per_object:.0f} us")
    print(f"write_path_over_sqlite {seconds / sum(sqlite.values()):.2f} x")
    # As bench_sync prints it: what 0.9 of the limit leaves per object for fetching and writing both.
    print(
        f"us_per_object_allowed_for_0.9_at_{args.rate:g} {1e6 * requests / (0.9 * args.rate * objects):.0f} us"
    )


if __name__ == "__main__":
    asyncio.run(main())
