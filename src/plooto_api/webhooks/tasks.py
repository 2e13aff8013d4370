"""Webhook and event job functions: deliver what is due, purge events past their retention."""

from __future__ import annotations

from datetime import timedelta

from plooto_api.jobs.context import JobContext
from plooto_api.jobs.registry import job
from plooto_api.services.events import purge_events
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.webhooks.delivery import DeliveryWorker


@job("webhooks.deliver")
async def deliver(ctx: JobContext) -> int:
    """Attempt the deliveries due now; returns how many were attempted."""
    worker = DeliveryWorker(ctx.sessions, ctx.vault, allow_private=ctx.settings.webhook_allow_private)
    return await worker.run_until_idle(max_rounds=10)


@job("events.purge")
async def purge(ctx: JobContext) -> int:
    """Delete events older than the retention period (and their deliveries); returns how many."""
    cutoff = utcnow() - timedelta(days=ctx.settings.event_retention_days)
    total = 0
    while True:
        with transaction(ctx.sessions) as session:
            deleted = purge_events(session, cutoff)
        total += deleted
        if deleted == 0:
            return total
