"""The gateway's schedule takes up writes a portal outage left open, as it does webhook deliveries."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from plooto_api.config import Settings
from plooto_api.jobs import InProcessEngine, get_job
from plooto_api.jobs.schedules import schedule_gateway


async def test_the_gateway_schedules_the_retry_of_writes() -> None:
    engine = InProcessEngine(context=None)  # type: ignore[arg-type]
    ctx: Any = SimpleNamespace(settings=Settings(write_retry_seconds=3600.0))
    schedule_gateway(engine, ctx)
    assert "writes:retry" in engine.schedules
    assert get_job("writes.retry") is not None  # a registered job: any engine can run it
    await engine.stop()
    assert engine.schedules == []
