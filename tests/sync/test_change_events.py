"""The events a change of a payment's status causes, from the JSON before and after (a pure function):
a sync sees only two snapshots, so a payment may pass several statuses between them."""

from __future__ import annotations

import pytest

from plooto_api.sync.upsert import _events_for_change


def _payment(status: str) -> dict[str, str]:
    return {"status": status}


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        ("processing", "in_transit", ["payment.sent"]),
        ("in_transit", "completed", ["payment.completed"]),
        # Passed in_transit between two syncs, or never shows it (a wire: processing, then completed).
        ("processing", "completed", ["payment.sent", "payment.completed"]),
        ("scheduled", "completed", ["payment.sent", "payment.completed"]),
        ("processing", "returned", ["payment.sent", "payment.failed"]),
        ("completed", "returned", ["payment.failed"]),
        ("processing", "failed", ["payment.failed"]),  # failed at the debit: never sent
        ("pending_approval", "scheduled", []),
    ],
)
def test_a_payment_is_reported_sent_once_whatever_statuses_it_passed_between_syncs(
    before: str, after: str, events: list[str]
) -> None:
    assert _events_for_change("payment", _payment(before), _payment(after)) == [
        "payment.updated",
        "payment.status_updated",
        *events,
    ]
    # A feed's first pull reports history as an update only.
    assert _events_for_change("payment", _payment(before), _payment(after), news=False) == ["payment.updated"]
