"""A company the login can no longer reach: gone for this login once the portal confirms it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from conftest import SANDBOX_SEED
from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.sync.engine import SyncEngine


def _live_bills(ctx: JobContext, company_id: str) -> int:
    with ctx.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(models.Bill).where(
            models.Bill.company_id == company_id, models.Bill.deleted_at.is_(None)
        )) or 0)  # fmt: skip


async def test_a_company_the_login_lost_is_marked_deleted_with_all_it_kept_and_comes_back_whole(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # The company stayed `Active` with every bill, payment and invoice live, and a fresh read of
    # one of them answered 503, though the portal said 404 CompanyNotFound.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    reset = control.post("/reset", json={**SANDBOX_SEED, "companies": 1})
    reset.raise_for_status()
    kept = {c["companyId"] for c in reset.json()["companies"]}
    with ctx.sessions() as session:
        (company,) = [c for c in session.scalars(select(models.Company)) if c.upstream_id not in kept]
        bill = session.scalars(select(models.Bill).where(models.Bill.company_id == company.id)).first()
        assert bill is not None
        lost_id, lost_upstream_id, bill_upstream_id = company.id, company.upstream_id, bill.upstream_id

    portal = await ctx.portals.get(connection_id)
    assert await portal.fetch_object(lost_upstream_id, "bill", bill_upstream_id) is None, (
        "gone, not unavailable"
    )
    report = await engine.sync_connection(connection_id)
    assert report.ok, report.error
    with ctx.sessions() as session:
        gone = list(session.scalars(select(models.Company.id).where(models.Company.deleted_at.is_not(None))))
        events = Counter(session.scalars(select(models.Event.type).where(models.Event.company_id == lost_id)))
        cursors = session.scalar(select(func.count()).select_from(models.SyncCursor).where(
            models.SyncCursor.company_upstream_id == lost_upstream_id
        ))  # fmt: skip
    assert gone == [lost_id], "the company the portal no longer lists, and only it"
    assert _live_bills(ctx, lost_id) == 0
    assert events["company.deleted"] == 1 and events["bill.deleted"] > 0
    assert cursors == 0, "pulled whole should the login reach it again"

    # The login reaches it again: the company and what it holds come back.
    control.post("/reset", json=SANDBOX_SEED).raise_for_status()
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        company = session.get(models.Company, lost_id)
        assert company is not None and company.deleted_at is None
    assert _live_bills(ctx, lost_id) > 0
