"""Settings of the gateway's own processes (every `plooto-api` command), as opposed to the gateway's
configuration (`config`): what the interpreter itself should do differently for this workload."""

from __future__ import annotations

import gc

# CPython collects its youngest generation every 700 net allocations of container objects. A sync
# allocates over a million short-lived ones (records, models, row dicts), so with that default a
# 10,000-bill initial sync ran about 1,900 collections, 14 of them over the whole heap: 2.6 s of a
# 25 s sync's CPU. With 10,000 the young garbage mostly dies before it is scanned or promoted:
# 61 collections, none full, 0.6 s (measured on bench/bench_sync.py's capacity run).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collect cyclic garbage less often than CPython's default (see GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)
