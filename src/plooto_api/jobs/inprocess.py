"""The default job engine: runs job functions on the process's own asyncio loop.

Jobs that share a concurrency key (one Plooto login) never run at the same time. A periodic job
whose previous run is still going skips its tick rather than queueing behind itself.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.registry import get_job
from plooto_api.log import get_logger

log = get_logger(__name__)


class InProcessEngine:
    """Runs jobs as asyncio tasks in this process."""

    def __init__(self, context: JobContext) -> None:
        self.context = context
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keyed: defaultdict[str, set[asyncio.Task[Any]]] = defaultdict(set)  # background tasks by key
        self._periodic: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    async def run(self, name: str, args: dict[str, Any] | None = None, *, key: str | None = None) -> Any:
        """Run a job now and return its result (waiting for others with the same key first)."""
        fn = get_job(name)
        lock = self._locks[key] if key else None
        if lock is None:
            return await fn(self.context, **(args or {}))
        async with lock:
            return await fn(self.context, **(args or {}))

    def enqueue(
        self, name: str, args: dict[str, Any] | None = None, *, key: str | None = None
    ) -> asyncio.Task[Any]:
        """Start a job in the background; failures are logged, never lost silently."""
        get_job(name)  # fail fast on an unknown job
        return self._start(name, args, key)

    def every(
        self,
        schedule_id: str,
        name: str,
        args: dict[str, Any] | None,
        interval_seconds: float,
        *,
        key: str | None = None,
        run_now: bool = True,
    ) -> None:
        """Run a job every `interval_seconds` (replacing any schedule with the same id)."""
        get_job(name)
        self.cancel(schedule_id)
        loop = asyncio.get_running_loop()
        self._periodic[schedule_id] = loop.create_task(
            self._tick(schedule_id, name, args, interval_seconds, key, run_now)
        )

    def watch(self, schedule_id: str, check: Callable[[], None], interval_seconds: float) -> None:
        """Call `check` (the engine's own upkeep, not a job) every `interval_seconds`, starting after
        the first interval; its failures are logged and it goes on."""
        self.cancel(schedule_id)
        self._periodic[schedule_id] = asyncio.get_running_loop().create_task(
            self._watch(schedule_id, check, interval_seconds)
        )

    def cancel(self, schedule_id: str) -> None:
        """Stop a periodic schedule (a run in progress finishes)."""
        task = self._periodic.pop(schedule_id, None)
        if task is not None:
            task.cancel()

    async def cancel_runs(self, key: str) -> int:
        """Cancel the background runs of one concurrency key (running or waiting for it) and wait
        until they have stopped; returns how many. Job functions are written to be interrupted
        (a sync resumes from its cursor)."""
        tasks = [task for task in self._keyed.get(key, ()) if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    @property
    def schedules(self) -> list[str]:
        """Ids of the periodic schedules in force."""
        return sorted(self._periodic)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop schedules and give running jobs `timeout` seconds to finish before cancelling them."""
        self._stopping = True
        for schedule_id in list(self._periodic):
            self.cancel(schedule_id)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _guarded(self, name: str, args: dict[str, Any] | None, key: str | None) -> Any:
        try:
            return await self.run(name, args, key=key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("job_failed", job=name, key=key, error_type=type(exc).__name__, error=str(exc))
            return None

    async def _tick(
        self,
        schedule_id: str,
        name: str,
        args: dict[str, Any] | None,
        interval: float,
        key: str | None,
        run_now: bool,
    ) -> None:
        if not run_now:
            await asyncio.sleep(interval)
        while not self._stopping:
            if key and self._locks[key].locked():
                log.debug("job_tick_skipped", schedule=schedule_id, reason="previous run still going")
            else:
                self._start(name, args, key)
            await asyncio.sleep(interval)

    def _start(self, name: str, args: dict[str, Any] | None, key: str | None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(self._guarded(name, args, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if key:
            keyed = self._keyed[key]
            keyed.add(task)

            def forget(done: asyncio.Task[Any]) -> None:
                keyed.discard(done)
                if not keyed and self._keyed.get(key) is keyed:
                    del self._keyed[key]

            task.add_done_callback(forget)
        return task

    async def _watch(self, schedule_id: str, check: Callable[[], None], interval: float) -> None:
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                check()
            except Exception as exc:
                log.error("engine_check_failed", schedule=schedule_id, error_type=type(exc).__name__,
                          error=str(exc))  # fmt: skip
