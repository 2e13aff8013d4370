"""What a second process would give an initial sync: page writes in a writer process of their own.

bench_sync's figures say the gateway's CPU bounds an initial sync at the sandbox's 25 req/s, and
that the gateway keeps about one core busy: fetching, checking and normalizing pages on the event
loop and writing them on a thread share one interpreter lock. This runs the same sync (no portal
limit, throttle at its cap) twice on fresh stores:

1. as the product does it (`in_process_*`);
2. with every page write (`SyncEngine._write_page`, unchanged: upserts, events, cursor, one
   transaction per page) sent to one writer process with its own store connection (`split_*`).

For each it prints the objects per second and the CPU time per object of the gateway's process, of
the writer process and of the sandbox while it served the sync. Their sum, halved, is what two fully
used cores could reach at best; `us_per_object_allowed_for_0.9_at_25` is what the target needs.
A design measurement, not a product mode. SQLite only. Prints `name value unit`.

    .venv/bin/python bench/bench_sync_split.py [--bills 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench_sync import _context, sandbox_process
from plooto_api.config import Settings
from plooto_api.jobs.context import JobContext
from plooto_api.sync.engine import SyncEngine
from plooto_api.sync.upsert import ApplyCounts
from plooto_api.upstream import ThrottleConfig

_WRITER: JobContext | None = None  # the writer process's own context


def _open_writer(settings: Settings) -> None:
    global _WRITER
    _WRITER = JobContext.from_settings(settings, migrate=False)


def _write_in_writer(args: tuple[Any, ...]) -> ApplyCounts:
    assert _WRITER is not None
    return SyncEngine(_WRITER)._write_page(*args)


def _writer_cpu() -> float:
    return time.process_time()


class _SplitEngine(SyncEngine):
    """Syncs as usual, but each page is written by the writer process (the calling thread waits)."""

    def __init__(self, ctx: JobContext, writer: ProcessPoolExecutor) -> None:
        super().__init__(ctx)
        self.writer = writer

    def _write_page(self, connection_id: str, company_upstream_id: str, feed: Any, records: list[Any],
                    state: dict[str, Any], absent: Any = None, news: Any = None) -> ApplyCounts:  # fmt: skip
        args = (connection_id, company_upstream_id, feed, records, state, absent, news)
        return self.writer.submit(_write_in_writer, args).result()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(bills: int, *, split: bool) -> dict[str, float]:
    with sandbox_process(2, bills, 100_000, 100_000) as (url, sandbox_proc):
        async with _context(url, ThrottleConfig().max_rate) as (ctx, connection_id):
            writer = None
            if split:  # spawn, not fork: this process has threads running
                writer = ProcessPoolExecutor(
                    1, multiprocessing.get_context("spawn"), _open_writer, (ctx.settings,)
                )
            try:
                engine = _SplitEngine(ctx, writer) if writer is not None else SyncEngine(ctx)
                writer_start = writer.submit(_writer_cpu).result() if writer is not None else 0.0
                sandbox_start, main_start = _cpu_seconds(sandbox_proc.pid), time.process_time()
                started = time.perf_counter()
                report = await engine.sync_connection(connection_id)
                elapsed = time.perf_counter() - started
                main_cpu, sandbox_cpu = (
                    time.process_time() - main_start,
                    _cpu_seconds(sandbox_proc.pid) - sandbox_start,
                )
                writer_cpu = writer.submit(_writer_cpu).result() - writer_start if writer is not None else 0.0
            finally:
                if writer is not None:
                    writer.shutdown()
            assert report.ok, report.error
            requests = (await ctx.portals.get(connection_id)).stats.requests
    objects = report.counts.created
    return {
        "objects": objects,
        "requests": requests,
        "objects_per_second": objects / elapsed,
        "gateway_cpu_us_per_object": 1e6 * main_cpu / objects,
        "writer_cpu_us_per_object": 1e6 * writer_cpu / objects,
        "sandbox_cpu_us_per_object": 1e6 * sandbox_cpu / objects,
        "total_cpu_us_per_object": 1e6 * (main_cpu + writer_cpu + sandbox_cpu) / objects,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bills", type=int, default=5000, help="bills per company (2 companies)")
    args = parser.parse_args()
    for name, split in (("in_process", False), ("split", True)):
        figures = asyncio.run(_run(args.bills, split=split))
        objects_per_request = figures["objects"] / figures["requests"]
        print(f"{name}_objects {figures['objects']} count")
        print(f"{name}_objects_per_second {figures['objects_per_second']:.0f} objects/s")
        print(f"{name}_us_per_object {1e6 / figures['objects_per_second']:.0f} us")
        for key in ("gateway", "writer", "sandbox", "total"):
            if key != "writer" or split:
                print(f"{name}_{key}_cpu_us_per_object {figures[f'{key}_cpu_us_per_object']:.0f} us")
        print(f"{name}_two_core_floor_us_per_object {figures['total_cpu_us_per_object'] / 2:.0f} us")
    print(f"us_per_object_allowed_for_0.9_at_25 {1e6 / (0.9 * 25 * objects_per_request):.0f} us")


if __name__ == "__main__":
    main()
