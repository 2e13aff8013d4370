"""Accounting-software sync: objects created or settled in the portal reach QuickBooks/Xero/NetSuite.

The domain notes say bills and invoices are marked paid in the accounting software within 15
minutes; the sandbox pushes every new or settled object 15 minutes after the change.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from plooto_sandbox.model import AccountingLink
from plooto_sandbox.store import ID_ATTRIBUTE, PortalState

SYNC_DELAY = timedelta(minutes=15)


def schedule_sync(state: PortalState, kind: str, company_id: str, object_id: str) -> None:
    """Queue a push of this object, if the company has an accounting connection."""
    company = state.companies.get(company_id)
    if company is not None and company.accounting_provider is not None:
        state.schedule(state.now + SYNC_DELAY, "accounting_sync", object_id, kind)


def on_sync_event(state: PortalState, kind: str, object_id: str) -> None:
    """The push happened: the object gets (or refreshes) its external id in the accounting system."""
    obj: Any = state.objects.get(kind, {}).get(object_id)
    if obj is None:
        return
    provider = state.companies[obj.company_id].accounting_provider
    if provider is None:
        return
    link: AccountingLink | None = obj.accounting
    if link is None:
        external = state.new_id() if provider == "Xero" else str(state.rng.randrange(1000, 9_999_999))
        obj.accounting = AccountingLink(provider, external, "Synced", state.now)
    else:
        link.sync_status = "Synced"
        link.last_synced_at = state.now
    state.touch(obj, obj.company_id, getattr(obj, ID_ATTRIBUTE[kind]))
