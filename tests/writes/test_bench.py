"""The randomized fault benchmark in miniature: 20 trials, no duplicate and no loss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_writes.py"


@pytest.mark.slow
def test_randomized_faults_pay_exactly_once() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "--trials", "20", "--seed", "7"],
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = dict(
        line.split(" ", 1) for line in result.stdout.splitlines() if line and not line.startswith("#")
    )
    assert figures["trials"] == "20 count"
    assert figures["duplicates"] == "0 count", result.stderr[-3000:]
    assert figures["lost"] == "0 count", result.stderr[-3000:]
    assert figures["write_latency_p50"].endswith(" ms")
