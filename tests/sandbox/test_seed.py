"""Seeded data: determinism, exact scale, and the cost of incremental (modifiedSince) queries."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest

from plooto_sandbox.config import DEFAULT_START_TIME
from plooto_sandbox.model import PaymentStatus
from plooto_sandbox.money import encode_portal_json, parse_portal_json
from plooto_sandbox.seed import seed_portal
from plooto_sandbox.store import ID_ATTRIBUTE, ChangeIndex


def fingerprint(seed: int) -> list[tuple[str, str, str]]:
    state = seed_portal(seed, 2, 25, DEFAULT_START_TIME)
    return sorted((b.bill_id, b.bill_number, str(b.total)) for b in state.objects["bill"].values())


def test_same_seed_same_data_and_different_seed_different_data() -> None:
    assert fingerprint(5) == fingerprint(5)
    assert fingerprint(5) != fingerprint(6)


@pytest.mark.parametrize(("companies", "bills"), [(1, 1), (3, 7), (2, 40)])
def test_exact_bill_count_per_company(companies: int, bills: int) -> None:
    state = seed_portal(9, companies, bills, DEFAULT_START_TIME)
    for company_id in state.companies:
        assert sum(1 for b in state.objects["bill"].values() if b.company_id == company_id) == bills


def test_every_payment_status_is_seeded_in_each_company() -> None:
    state = seed_portal(1, 2, 22, DEFAULT_START_TIME)
    for company_id in state.companies:
        statuses = {p.status for p in state.objects["payment"].values() if p.company_id == company_id}
        assert statuses == set(PaymentStatus)


def test_json_money_never_goes_through_float() -> None:
    encoded = encode_portal_json(
        {"amount": Decimal("0.10"), "rate": Decimal("1.378650000"), "n": 3, "ok": True}
    )
    assert encoded == b'{"amount":0.10,"rate":1.378650000,"n":3,"ok":true}'
    assert parse_portal_json(b'{"a": 0.1}')["a"] == Decimal("0.1")
    # User text cannot forge a number, even if it imitates the encoder's internal marker.
    assert encode_portal_json({"memo": "\x00dec:1.00"}) == b'{"memo":"\\u0000dec:1.00"}'
    with pytest.raises(ValueError):
        encode_portal_json({"bad": Decimal("NaN")})


def test_modified_since_cost_does_not_grow_with_collection() -> None:
    def timed_query(size: int) -> float:
        index = ChangeIndex()
        start = DEFAULT_START_TIME - timedelta(days=365)
        for n in range(size):
            index.record(f"bill-{n:07d}", start + timedelta(seconds=n), n)
        since = DEFAULT_START_TIME
        for n in range(10):
            index.record(f"bill-{n:07d}", since + timedelta(seconds=n), size + n)
        began = time.perf_counter()
        for _ in range(200):
            assert len(index.changed_since(since)) == 10
        return time.perf_counter() - began

    small, large = timed_query(10_000), timed_query(100_000)
    assert large < small * 5 + 0.05  # log n, not n: a scan would be ~10x slower


def test_index_keeps_latest_entry_only() -> None:
    index = ChangeIndex()
    t = DEFAULT_START_TIME
    index.record("a", t, 1)
    index.record("b", t, 2)
    index.record("a", t + timedelta(seconds=1), 3)
    assert index.ordered_ids() == ["b", "a"]
    assert index.changed_since(t + timedelta(seconds=1)) == ["a"]
    assert len(index) == 2


def test_seeded_stamps_never_after_start_and_indexes_complete() -> None:
    state = seed_portal(2, 3, 40, DEFAULT_START_TIME)
    for kind, table in state.objects.items():
        assert all(obj.created <= obj.modified <= DEFAULT_START_TIME for obj in table.values()), kind
        indexed = sum(len(index) for (_, k), index in state.indexes.items() if k == kind)
        assert indexed == len(table), kind


def test_seeded_stamps_are_unique_and_modified_since_returns_each_object_at_its_own() -> None:
    # At this scale hundreds of seeded invoices and reminders were made at one instant; left tied,
    # they broke the index's order, and `modifiedSince=<an object's lastModified>` missed it.
    state = seed_portal(42, 2, 600, DEFAULT_START_TIME)
    for (_, kind), index in state.indexes.items():
        objects = [state.objects[kind][object_id] for object_id in index.ordered_ids()]
        stamps = [obj.modified for obj in objects]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), kind
        for obj in objects:
            listed = index.changed_since(obj.modified)
            assert listed[0] == getattr(obj, ID_ATTRIBUTE[kind]), kind  # itself first, nothing older
        assert all(obj.created <= obj.modified <= DEFAULT_START_TIME for obj in objects), kind


def test_customer_payments_keep_an_audit_trail_of_their_statuses() -> None:
    state = seed_portal(1, 2, 22, DEFAULT_START_TIME)
    payments = list(state.objects["customerPayment"].values())
    assert payments
    for payment in payments:
        lines = [e.description for e in payment.audit if e.description.startswith("Status changed to ")]
        assert (
            lines[0] == "Status changed to Pending"
            and lines[-1] == f"Status changed to {payment.status.value}"
        )
        assert [e.timestamp for e in payment.audit] == sorted(e.timestamp for e in payment.audit)


def test_a_bill_from_capture_carries_its_scanned_file() -> None:
    # As one uploaded to Capture does: seeded ones had only the OCR fields, no file.
    state = seed_portal(1, 2, 22, DEFAULT_START_TIME)
    captured = [b for b in state.objects["bill"].values() if b.captured is not None]
    assert captured
    for bill in captured:
        assert bill.captured is not None
        [scan] = [a for a in bill.attachments if a.file_name == bill.captured.file_name]
        assert scan.size_bytes > 0 and scan.content_type == "application/pdf"
