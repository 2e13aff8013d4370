"""The periodic retry of writes (`writes.retry`): the operations a portal outage left open are taken
up again by the running gateway, on a schedule any engine runs, not only at the next start."""

from __future__ import annotations

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.registry import job
from plooto_api.services import writes


@job("writes.retry")
async def retry_writes(ctx: JobContext) -> dict[str, str]:
    """Carry on the open operations whose retry time has come, reading the portal back first."""
    return await writes.retry_due(ctx)
