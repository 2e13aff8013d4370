"""The write jobs: carry one operation to its end (`writes.execute`), resolve what a previous
process left unfinished (`writes.recover`, run when the gateway starts), and take up again, on a
schedule any engine runs, what a portal outage left open (`writes.retry`)."""

from __future__ import annotations

import asyncio

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.registry import job
from plooto_api.log import get_logger
from plooto_api.services import writes

log = get_logger(__name__)


@job("writes.execute")
async def execute_write(ctx: JobContext, operation_id: str) -> str:
    """Send (or read back) one operation until it succeeds, fails or needs a person."""
    return await writes.execute(ctx, operation_id)


@job("writes.recover")
async def recover_writes(ctx: JobContext) -> dict[str, str]:
    """Resolve every pending or running operation by reading the portal back before any resend."""
    ids = writes.unfinished(ctx)
    if ids:
        log.info("writes.recovering", operations=len(ids))
    results = await asyncio.gather(*(writes.execute(ctx, i) for i in ids), return_exceptions=True)
    return {
        i: (r if isinstance(r, str) else f"error: {type(r).__name__}")
        for i, r in zip(ids, results, strict=True)
    }


@job("writes.retry")
async def retry_writes(ctx: JobContext) -> dict[str, str]:
    """Carry on the open operations whose retry time has come, reading the portal back first."""
    return await writes.retry_due(ctx)
