"""The event types the gateway emits, in one list that webhook subscriptions are checked against.

Built from the same sources the emitters use, so it stays true: every synced object type has
`<type>.created`, `.updated` and `.deleted` (sync/upsert.py), a few have more on particular changes,
a connection has `connection.<state>` on each change of state (`connection.repaired` when it leaves
a problem state) and `connection.removed` (services/connections.py).
"""

from __future__ import annotations

from typing import get_args

from plooto_api.mapping import OBJECT_MAPS
from plooto_api.schemas.gateway import ConnectionState
from plooto_api.webhooks.fanout import event_type_matches

TEST_EVENT_TYPE = "webhook_endpoint.test"

# Emitted on particular changes of an object, beside its `.updated` (sync/upsert.py).
_CHANGE_EVENTS = (
    "bill.approval_updated",
    "payment.status_updated", "payment.sent", "payment.failed", "payment.completed", "payment.held",
    "payment.released",
    "invoice.paid", "invoice.overdue", "invoice.reminder_sent",
)  # fmt: skip

EVENT_TYPES: frozenset[str] = frozenset(
    [f"{object_type}.{change}" for object_type in OBJECT_MAPS for change in ("created", "updated", "deleted")]
    + list(_CHANGE_EVENTS)
    + [f"connection.{state}" for state in get_args(ConnectionState)]
    + ["connection.repaired", "connection.removed"]
    + ["webhook_endpoint.disabled", TEST_EVENT_TYPE]
)


def unknown_event_filter(pattern: str) -> bool:
    """Whether a subscription's `pattern` (a type, a family `bill.*`, or `*`) matches no event type."""
    return not any(event_type_matches(pattern, event_type) for event_type in EVENT_TYPES)
