"""The job functions, registered by name, so any engine (in-process or distributed) can run them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from plooto_api.jobs.context import JobContext

JobFunction = Callable[..., Awaitable[Any]]

JOBS: dict[str, JobFunction] = {}

# Modules whose import registers jobs; loaded on first lookup so the registry stays import-light.
TASK_MODULES = ("plooto_api.sync.tasks", "plooto_api.services.write_tasks", "plooto_api.webhooks.tasks")
_loaded = False


def job(name: str) -> Callable[[JobFunction], JobFunction]:
    """Register `async def fn(ctx: JobContext, **args)` as the job `name`. Args must be JSON values,
    so a distributed engine can store them."""

    def register(fn: JobFunction) -> JobFunction:
        if name in JOBS:
            raise ValueError(f"job {name!r} registered twice")
        JOBS[name] = fn
        return fn

    return register


def get_job(name: str) -> JobFunction:
    """The registered function of a job, loading the modules that define jobs on first use."""
    global _loaded
    if not _loaded:
        import importlib

        for module in TASK_MODULES:
            importlib.import_module(module)
        _loaded = True
    try:
        return JOBS[name]
    except KeyError:
        raise LookupError(f"no job named {name!r}") from None


__all__ = ["JOBS", "JobContext", "JobFunction", "get_job", "job"]
