"""An initial sync beside another busy thread of the same process (the worst case of a gateway that
serves API requests on its event loop while a sync writes on a thread).

Python's sqlite3 driver lets go of the GIL for every step of a statement. Taking it back waits for
the thread holding it to yield it, up to the interpreter's switch interval (5 ms) when that thread
never waits on its own. So the number of statement steps a page write takes, not its CPU time,
decides how fast a sync goes while something else keeps the process busy.

Runs bench_sync's initial sync (no portal limit, throttle at its cap) alone, then with a thread
that runs Python and never waits. Prints `name value unit`.

    .venv/bin/python bench/bench_sync_busy.py [--bills 500]
"""

from __future__ import annotations

import argparse
import asyncio
import threading

from bench_sync import initial_sync
from plooto_api.upstream import ThrottleConfig


def _busy(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bills", type=int, default=500, help="bills per company (2 companies)")
    args = parser.parse_args()
    rate = ThrottleConfig().max_rate
    alone = asyncio.run(initial_sync(100_000, args.bills, start_rate=rate))
    stop = threading.Event()
    thread = threading.Thread(target=_busy, args=(stop,), daemon=True)
    thread.start()
    try:
        busy = asyncio.run(initial_sync(100_000, args.bills, start_rate=rate))
    finally:
        stop.set()
        thread.join()
    print(f"sync_objects {alone['initial_sync_objects'][0]} count")
    print(f"sync_alone_objects_per_second {alone['initial_sync_objects_per_second'][0]} objects/s")
    print(
        f"sync_beside_busy_thread_objects_per_second {busy['initial_sync_objects_per_second'][0]} objects/s"
    )
    slowdown = alone["initial_sync_objects_per_second"][0] / busy["initial_sync_objects_per_second"][0]
    print(f"sync_beside_busy_thread_slowdown {slowdown:.1f} x")


if __name__ == "__main__":
    main()
