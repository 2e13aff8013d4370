"""The gateway's CPU cost of an initial sync, in instructions per object: a figure that does not move
with the machine's load or clock, as bench_sync's seconds do on a shared machine.

Runs bench_sync's initial sync (no portal limit, throttle at its cap) in a child process under
valgrind's callgrind, which counts the instructions the gateway process executes (every thread; the
sandbox process is not counted). A second, tiny sync measures what every run pays regardless
(interpreter start, imports, signing in); the difference, divided by the difference in objects, is
the cost of syncing one more object. Needs valgrind; takes a few minutes.

    .venv/bin/python bench/bench_sync_instructions.py [--bills 500]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = """
import asyncio, sys
sys.path.insert(0, {bench!r})
import bench_sync
from plooto_api.upstream import ThrottleConfig
result = asyncio.run(bench_sync.initial_sync(100_000, {bills}, start_rate=ThrottleConfig().max_rate))
print("objects", result["initial_sync_objects"][0])
"""


def count(bills: int) -> tuple[int, int]:
    """(instructions, objects) of a sync of `bills` bills per company (2 companies)."""
    code = CHILD.format(bench=str(Path(__file__).parent), bills=bills)
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    instructions = re.search(r"Collected : (\d+)", done.stderr)
    objects = re.search(r"^objects (\d+)$", done.stdout, re.MULTILINE)
    if instructions is None or objects is None:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return int(instructions.group(1)), int(objects.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bills", type=int, default=500, help="bills per company (2 companies)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    base_instructions, base_objects = count(10)
    instructions, objects = count(args.bills)
    per_object = (instructions - base_instructions) / (objects - base_objects)
    print(f"sync_instructions_objects {objects - base_objects} count")
    print(f"sync_instructions_total {(instructions - base_instructions) / 1e9:.2f} G")
    print(f"sync_instructions_per_object {per_object / 1e3:.0f} k")


if __name__ == "__main__":
    main()
