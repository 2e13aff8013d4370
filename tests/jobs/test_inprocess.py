"""The in-process engine runs registered jobs, serializes per key and survives failing jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from plooto_api.jobs import JOBS, InProcessEngine, job


@pytest.fixture
def journal() -> list[Any]:
    events: list[Any] = []

    @job("test.record")
    async def record(ctx: Any, value: int, gate: str | None = None) -> int:
        events.append(("start", value))
        if gate:
            await GATES[gate].wait()
        events.append(("end", value))
        return value * 2

    @job("test.boom")
    async def boom(ctx: Any) -> None:
        raise RuntimeError("boom")

    yield events
    JOBS.pop("test.record")
    JOBS.pop("test.boom")


GATES: dict[str, asyncio.Event] = {}


async def test_jobs_with_one_key_never_overlap(journal: list[Any]) -> None:
    engine = InProcessEngine(context=None)  # type: ignore[arg-type]
    GATES["g"] = asyncio.Event()
    first = engine.enqueue("test.record", {"value": 1, "gate": "g"}, key="connection:a")
    second = engine.enqueue("test.record", {"value": 2}, key="connection:a")
    other = engine.enqueue("test.record", {"value": 3}, key="connection:b")
    await other
    assert ("end", 3) in journal and ("start", 2) not in journal  # b ran while a was busy
    GATES["g"].set()
    assert await first == 2 and await second == 4
    assert journal.index(("end", 1)) < journal.index(("start", 2))


async def test_failures_are_contained_and_unknown_jobs_refused(journal: list[Any]) -> None:
    engine = InProcessEngine(context=None)  # type: ignore[arg-type]
    assert await engine.enqueue("test.boom") is None  # logged, not raised into the loop
    assert await engine.run("test.record", {"value": 5}) == 10
    with pytest.raises(LookupError):
        engine.enqueue("no.such.job")


async def test_periodic_schedule_skips_ticks_while_busy(journal: list[Any]) -> None:
    engine = InProcessEngine(context=None)  # type: ignore[arg-type]
    GATES["slow"] = asyncio.Event()
    engine.every("s1", "test.record", {"value": 7, "gate": "slow"}, 0.01, key="connection:a")
    for _ in range(20):
        await asyncio.sleep(0.01)  # lets the scheduler tick; the gate holds the first run open
    assert journal.count(("start", 7)) == 1
    GATES["slow"].set()
    await engine.stop()
    assert engine.schedules == []


async def test_runs_of_one_key_are_cancelled_and_others_go_on(journal: list[Any]) -> None:
    engine = InProcessEngine(context=None)  # type: ignore[arg-type]
    GATES["held"] = asyncio.Event()
    running = engine.enqueue("test.record", {"value": 1, "gate": "held"}, key="connection:a")
    waiting = engine.enqueue("test.record", {"value": 2}, key="connection:a")
    other = engine.enqueue("test.record", {"value": 3, "gate": "held"}, key="connection:b")
    await asyncio.sleep(0)  # let them start
    assert await engine.cancel_runs("connection:a") == 2
    assert running.cancelled() and waiting.cancelled()
    assert ("start", 2) not in journal  # the waiting run never started
    assert await engine.cancel_runs("connection:a") == 0
    GATES["held"].set()
    assert await other == 6  # another key's run is untouched
    await engine.stop()


async def test_a_watch_calls_its_check_every_interval_and_survives_its_failures() -> None:
    engine = InProcessEngine(context=None)  # type: ignore[arg-type]
    calls: list[int] = []
    twice = asyncio.Event()

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:
            twice.set()
        raise RuntimeError("a failing check is logged, not fatal")

    engine.watch("test:watch", check, 0.001)
    assert engine.schedules == ["test:watch"]
    await asyncio.wait_for(twice.wait(), timeout=5)
    await engine.stop()
    assert engine.schedules == []
