"""Every feed's records fit the normalized schemas once references are resolved (as the sync does)."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from plooto_api import mapping, schemas
from plooto_api.schemas.common import PortalObject
from plooto_api.upstream import FEEDS, PortalSession, UpstreamRecord, UpstreamRef
from plooto_api.upstream.portal import reminder_offsets
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import run

SCHEMAS: dict[str, type[PortalObject]] = {
    "company": schemas.Company,
    "bank_account": schemas.BankAccount,
    "user": schemas.User,
    "approval_rule": schemas.ApprovalRule,
    "vendor": schemas.Vendor,
    "customer": schemas.Customer,
    "bill": schemas.Bill,
    "payment": schemas.Payment,
    "invoice": schemas.Invoice,
    "recurring_invoice": schemas.RecurringInvoice,
    "transaction": schemas.Transaction,
    "fx_conversion": schemas.FxConversion,
    "captured_document": schemas.CapturedDocument,
    "sync_mapping": schemas.SyncMapping,
}


def resolve_refs_to_dummy(value: Any, seen: list[UpstreamRef]) -> Any:
    if isinstance(value, UpstreamRef):
        seen.append(value)
        return f"{value.object_type}_{value.upstream_id}"
    if isinstance(value, dict):
        return {k: resolve_refs_to_dummy(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs_to_dummy(v, seen) for v in value]
    return value


def no_floats(value: Any) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(no_floats(v) for v in value.values())
    if isinstance(value, list):
        return all(no_floats(v) for v in value)
    return True


def validate(record: UpstreamRecord, refs: list[UpstreamRef]) -> PortalObject:
    model = SCHEMAS[record.object_type]
    assert record.modified_at.tzinfo is not None and record.created_at.tzinfo is not None
    assert set(record.accounting_refs) == {"quickbooks", "xero", "netsuite"}
    assert no_floats(record.fields)
    forbidden = {
        "id",
        "object",
        "company_id",
        "upstream_id",
        "created_at",
        "updated_at",
        "upstream",
        "accounting_refs",
        "deleted_at",
    }
    assert not forbidden & set(record.fields), record.object_type
    return model.model_validate(
        {
            **resolve_refs_to_dummy(record.fields, refs),
            "id": f"{record.object_type}_x",
            "company_id": "cmp_x",
            "upstream_id": record.upstream_id,
            "created_at": record.created_at,
            "updated_at": record.modified_at,
            "upstream": {"status_raw": record.status_raw, "fetched_at": datetime.now(UTC), "url": record.url},
            "accounting_refs": record.accounting_refs,
        }
    )


async def _everything(session: PortalSession) -> list[UpstreamRecord]:
    companies = await session.list_companies()
    records = list(companies)
    for company in companies:
        for feed in FEEDS:
            page_number = 1
            while True:
                page = await session.list_changes(
                    company.upstream_id,
                    feed.name,
                    modified_since=None,
                    page_number=page_number,
                    page_size=500,
                )
                assert {r.object_type for r in page.records} <= set(feed.object_types), feed.name
                records.extend(page.records)
                if not page.has_more:
                    break
                page_number += 1
    await session.aclose()
    return records


def test_every_feed_normalizes_into_the_schemas(make_session: SessionFactory) -> None:
    records = run(_everything(make_session()))
    by_type: dict[str, list[UpstreamRecord]] = {}
    for record in records:
        by_type.setdefault(record.object_type, []).append(record)
    parts = {key: by_type.pop(key) for key in list(by_type) if key in mapping.PARTS}
    assert set(by_type) == set(SCHEMAS), set(SCHEMAS) - set(by_type)
    assert set(parts) == set(mapping.PARTS)

    refs: list[UpstreamRef] = []
    validated = {key: [validate(r, refs) for r in group] for key, group in by_type.items()}
    for key, group in parts.items():  # an item of its parent's list, which its record refers to
        part = mapping.PARTS[key]
        item_schema = mapping.OBJECT_MAPS[part.parent_type].children[part.field].schema
        for record in group:
            assert no_floats(record.fields) and record.fields["upstream_id"] == record.upstream_id
            fields = resolve_refs_to_dummy(record.fields, refs)
            item_schema.model_validate({k: v for k, v in fields.items() if k != part.parent_key})
    reminders = [r.fields for r in parts["invoice_reminder"]]
    assert {r["status"] for r in reminders} >= {"scheduled", "sent"}
    assert {r["kind"] for r in reminders} >= {"before_due", "after_due"}
    known = {(r.object_type, r.upstream_id) for r in records}
    dangling = {(ref.object_type, ref.upstream_id) for ref in refs} - known
    assert not dangling, sorted(dangling)[:5]  # every reference points at a record some feed emits

    bills = validated["bill"]
    assert {b.status for b in bills} >= {
        "pending_approval",
        "approved",
        "partially_paid",
        "scheduled",
        "paid",
        "rejected",
        "void",
    }  # type: ignore[attr-defined]
    assert any(b.capture for b in bills)  # type: ignore[attr-defined]
    assert all(isinstance(b.total.amount, Decimal) for b in bills)  # type: ignore[attr-defined]
    payments = validated["payment"]
    assert {p.direction for p in payments} == {"payable", "receivable"}  # type: ignore[attr-defined]
    assert len({p.status for p in payments}) >= 7  # type: ignore[attr-defined]
    rules = validated["approval_rule"]
    assert {r.kind for r in rules} == {"signing_authority", "threshold"}  # type: ignore[attr-defined]
    assert {s.provider for s in validated["sync_mapping"]} >= {"quickbooks", "xero"}  # type: ignore[attr-defined]
    kinds = {t.kind for t in validated["transaction"]}  # type: ignore[attr-defined]
    assert kinds == {"debit", "fee", "credit"}  # a recalled payment's money back in the wallet


def test_payable_payment_references_and_derived_records(make_session: SessionFactory) -> None:
    records = run(_everything(make_session()))
    payments = [r for r in records if r.object_type == "payment" and r.fields["direction"] == "payable"]
    cross = [p for p in payments if p.fields["fx_conversion_id"] is not None]
    assert cross
    fx = {r.upstream_id: r for r in records if r.object_type == "fx_conversion"}
    for payment in cross:
        conversion = fx[payment.fields["fx_conversion_id"].upstream_id]
        assert conversion.fields["source"]["currency"] != conversion.fields["target"]["currency"]
        assert conversion.fields["target"] == payment.fields["amount"]
    allocation = payments[0].fields["allocations"][0]
    assert isinstance(allocation["bill_id"], UpstreamRef) and allocation["bill_id"].object_type == "bill"
    assert isinstance(payments[0].fields["vendor_id"], UpstreamRef)


def test_reminder_schedule_as_day_offsets() -> None:
    schedule = {"enabled": True, "daysBeforeDue": [3], "daysAfterDue": [1, 7]}
    assert reminder_offsets(schedule) == [-3, 1, 7]
    assert reminder_offsets({**schedule, "enabled": False}) == []


def test_record_fields_are_plain_dataclass() -> None:
    assert [f.name for f in dataclass_fields(UpstreamRecord)][:3] == [
        "object_type",
        "upstream_id",
        "company_upstream_id",
    ]


def test_loads_keeps_numbers_exact_and_refuses_what_is_not_json() -> None:
    from plooto_api.upstream._convert import loads

    assert loads(
        b'{"a": 10.10, "b": 0.1234567890123456789, "c": 3, "d": 123456789012345678901234567890}'
    ) == {
        "a": Decimal("10.10"),
        "b": Decimal("0.1234567890123456789"),
        "c": 3,
        "d": 123456789012345678901234567890,
    }
    assert str(loads(b"[10.10]")[0]) == "10.10"  # the portal's own digits, not a float's
    assert loads(b"\xef\xbb\xbf{}") == {} and loads("\ufeff[]") == []
    for not_json in (b"NaN", b"[Infinity]", b"<html>", b'{"a": 1'):
        with pytest.raises(ValueError):
            loads(not_json)


def test_a_date_where_a_timestamp_is_wanted_falls_on_the_portals_day() -> None:
    # A completed customer payment has only its deposit date: midnight UTC of that day was the
    # evening before in Toronto, before the payment completed and on another business day.
    from zoneinfo import ZoneInfo

    from plooto_api.upstream._convert import date_as_timestamp
    from plooto_api.upstream.portal import BUSINESS_TIME_ZONE

    zone = ZoneInfo(BUSINESS_TIME_ZONE)
    winter = date_as_timestamp("2026-02-25", zone)
    summer = date_as_timestamp("2026-07-02", zone)
    assert winter == datetime(2026, 2, 25, 5, tzinfo=UTC) and summer == datetime(2026, 7, 2, 4, tzinfo=UTC)
    assert winter is not None and winter.astimezone(zone).date().isoformat() == "2026-02-25"
    assert date_as_timestamp(None, zone) is None


def test_completed_customer_payments_complete_on_their_deposit_day(make_session: SessionFactory) -> None:
    from zoneinfo import ZoneInfo

    from plooto_api.upstream.portal import BUSINESS_TIME_ZONE

    records = run(_everything(make_session()))
    completed = [r for r in records if r.object_type == "payment" and r.fields["direction"] == "receivable"
                 and r.fields["completed_at"] is not None]  # fmt: skip
    assert completed, "the seed has completed customer payments"
    from_trail = 0
    for record in completed:  # on the deposit day in Toronto (not the evening before, in UTC)
        at = record.fields["completed_at"].astimezone(ZoneInfo(BUSINESS_TIME_ZONE))
        assert at.date() == record.fields["expected_arrival"]
        # The trail's time when it is on that day, as a payable's; else the start of the day.
        trail = [h["occurred_at"] for h in record.fields["status_history"] if h["status_raw"] == "Completed"]
        assert at in trail or (at.hour, at.minute) == (0, 0)
        from_trail += at in trail
    assert from_trail


def test_a_payment_stopped_before_its_approvals_were_in_awaits_none(make_session: SessionFactory) -> None:
    # Cancelled or deleted payments read `approval.status: pending`, every step skipped: 1,364
    # "pending" payments where the portal had 456 awaiting approval.
    records = run(_everything(make_session()))
    payments = [r for r in records if r.object_type == "payment" and r.fields["direction"] == "payable"]
    stopped = [
        p
        for p in payments
        if p.fields["status"] == "cancelled" and p.fields["approval"]["status"] != "rejected"
    ]
    assert stopped, "the seed has cancelled and deleted payments"
    assert {p.fields["approval"]["status"] for p in stopped} <= {"cancelled", "approved", "not_required"}
    assert any(p.fields["approval"]["status"] == "cancelled" for p in stopped)
    waiting = [p for p in payments if p.fields["approval"]["status"] == "pending"]
    assert waiting and {p.fields["status"] for p in waiting} == {"pending_approval"}


def test_a_payment_waiting_for_its_approvers_has_that_in_its_history(make_session: SessionFactory) -> None:
    # The portal's "(Additional approvals required)" line was not read: such a payment had no history.
    records = run(_everything(make_session()))
    waiting = [r for r in records if r.object_type == "payment" and r.fields["status"] == "pending_approval"]
    assert waiting, "the seed has payments waiting for approval"
    for payment in waiting:
        assert [change["status"] for change in payment.fields["status_history"]] == ["pending_approval"]


def test_a_reminder_is_scheduled_for_the_portals_day() -> None:
    # 02:30 UTC on 7 March is still 6 March in Toronto, the portal's business day: it was served as the 7th.
    from plooto_api.upstream._convert import Context
    from plooto_api.upstream.portal import normalize_reminder

    raw = {"reminderId": "r-1", "invoiceId": "i-1", "kind": "Manual", "scheduledFor": "2026-03-07T02:30:00Z",
           "sentAt": None, "channel": "Email", "status": "Scheduled", "lastModified": "2026-03-07T02:30:00Z",
           "createdDate": "2026-03-07T02:30:00Z"}  # fmt: skip
    [record] = normalize_reminder(
        raw, Context("c-1", "http://portal.test", datetime(2026, 3, 7, 2, 31, tzinfo=UTC))
    )
    assert record.fields["scheduled_for"].isoformat() == "2026-03-06"


def test_a_payment_completes_on_the_day_the_portal_says() -> None:
    # A backdated payment's trail said 14 February while the portal's completedDate was 5 February.
    from plooto_api.upstream.portal import completed_at

    def trail(when: str) -> list[dict[str, Any]]:
        return [
            {"status_raw": "Completed", "status": "completed", "occurred_at": datetime.fromisoformat(when)}
        ]

    same_day = trail("2026-02-05T19:30:00+00:00")
    assert completed_at(same_day, "2026-02-05") == same_day[0]["occurred_at"]  # the trail's time on that day
    assert completed_at(trail("2026-02-14T08:22:24+00:00"), "2026-02-05") == datetime(
        2026, 2, 5, 5, tzinfo=UTC
    )
    assert completed_at([], "2026-02-05") == datetime(2026, 2, 5, 5, tzinfo=UTC)  # midnight in Toronto
    assert completed_at(same_day, None) == same_day[0]["occurred_at"]
    assert completed_at([], None) is None


def test_a_captured_document_has_the_size_of_its_file(make_session: SessionFactory) -> None:
    # Seeded Capture bills lacked their scanned file, and a document without it read 0 bytes.
    records = run(_everything(make_session()))
    documents = [r for r in records if r.object_type == "captured_document"]
    assert documents, "the seed has bills from Capture"
    bills = {r.upstream_id: r for r in records if r.object_type == "bill"}
    for document in documents:
        bill = bills[document.fields["bill_id"].upstream_id]
        [file] = [a for a in bill.fields["attachments"] if a["file_name"] == document.fields["filename"]]
        assert document.fields["size_bytes"] == file["size_bytes"] > 0


def test_a_captured_document_whose_file_the_bill_lacks_has_no_size() -> None:
    from plooto_api.upstream._convert import Context
    from plooto_api.upstream.portal import normalize_bill

    stamp = "2026-03-02T14:00:00Z"
    raw = {"billId": "b-1", "vendorId": None, "billNumber": "OCR-1", "currency": "CAD", "issueDate": None,
           "dueDate": None, "lineItems": [], "totalAmount": Decimal("10.00"), "paidAmount": Decimal("0.00"),
           "scheduledAmount": Decimal("0.00"), "openBalance": Decimal("10.00"), "status": "Open",
           "source": "Capture", "memo": None, "createdByUserId": None, "approvalPolicyId": None,
           "approvalSteps": [], "paymentIds": [], "accountingIds": None, "lastModified": stamp, "createdDate": stamp,
           "attachments": [{"attachmentId": "a-1", "fileName": "other.pdf", "contentType": "application/pdf",
                            "sizeBytes": 1234, "uploadedDate": stamp}],
           "capturedDocument": {"documentId": "d-1", "fileName": "scan.png", "extractedFields": {},
                                "overallConfidence": Decimal("0.9"), "ocrStatus": "Completed"}}  # fmt: skip
    records = normalize_bill(raw, Context("c-1", "http://portal.test", datetime(2026, 3, 2, 14, tzinfo=UTC)))
    [document] = [r for r in records if r.object_type == "captured_document"]
    assert document.fields["size_bytes"] is None  # unknown, not 0
    assert document.fields["content_type"] == "image/png"  # told by its name
    validate(document, [])
