"""The approval lists over data synced from the sandbox: its seeded payments include some cancelled
or deleted before any signing authority decided, which are awaiting nothing and were never approved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from plooto_api.jobs import JobContext
from plooto_api.services import approvals
from plooto_api.store import models
from plooto_api.store.pagination import PageRequest
from plooto_api.store.scope import AccessScope
from plooto_api.sync.engine import SyncEngine


def _listed(ctx: JobContext, kind: Any, status: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    with ctx.sessions() as session:
        while True:
            page = approvals.list_approvals(session, AccessScope.unrestricted(), PageRequest(100, cursor),
                                            kind=kind, status=status, company=None)  # fmt: skip
            items.extend(page.items)
            if not page.has_more:
                return items
            cursor = page.next_cursor


async def test_payments_cancelled_before_approval_are_in_no_list(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    report = await SyncEngine(ctx).sync_connection(make_connection())
    assert report.ok, report.error
    with ctx.sessions() as session:
        unapproved = set(
            session.scalars(
                select(models.Payment.id).where(models.Payment.upstream_status_raw.in_(("Cancelled", "Deleted")))
            )
        )  # fmt: skip
    assert unapproved  # the seed cancels and deletes payments still awaiting approval
    lists = {status: _listed(ctx, "payment", status) for status in ("pending", "approved", "rejected")}
    assert lists["pending"] and lists["approved"] and lists["rejected"]
    for status, items in lists.items():
        assert not unapproved & {a["id"] for a in items}, status
        assert {a["status"] for a in items} == {status}
    for item in lists["approved"]:
        decisions = [step["decision"] for step in item["steps"]]
        assert decisions.count("approved") >= 1 and "rejected" not in decisions
        assert item["payment"]["status"] != "pending_approval"  # recalled ones were approved, then sent
    assert all(a["payment"]["upstream"]["status_raw"] == "Rejected" for a in lists["rejected"])
    assert all(a["payment"]["status"] == "pending_approval" for a in lists["pending"])
