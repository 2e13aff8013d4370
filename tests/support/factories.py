"""One realistic normalized object of every type, for round-trip and repository tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from plooto_api import schemas
from plooto_api.store.base import new_id

T0 = datetime(2026, 11, 2, 15, 4, 5, 123000, tzinfo=UTC)
T1 = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def money(amount: str, currency: str = "CAD") -> schemas.Money:
    return schemas.Money(amount=Decimal(amount), currency=currency)


def _common(prefix: str, company_id: str, upstream_id: str) -> dict[str, Any]:
    return {
        "id": new_id(prefix),
        "company_id": company_id,
        "upstream_id": upstream_id,
        "created_at": T0,
        "updated_at": T1,
        "upstream": {"status_raw": "Active", "fetched_at": T1, "url": f"https://portal.test/x/{upstream_id}"},
        "accounting_refs": {"quickbooks": "QB-17", "xero": None, "netsuite": "NS-4"},
    }


def company(upstream_id: str = "C-1001") -> schemas.Company:
    data = _common("cmp", "", upstream_id)
    data["company_id"] = data["id"]
    return schemas.Company(
        **data,
        name="Maple Leaf Dental Ltd.",
        country="CA",
        base_currency="CAD",
        status="active",
        approval_policy={"rules": 2, "dual_approval_above": "10000.00"},
    )


def every_object(company_id: str) -> list[schemas.PortalObject]:
    """One object of every mirrored type in `company_id`, linked to each other as in real data."""
    c = company_id
    bank = schemas.BankAccount(
        **_common("ba", c, "BA-1"),
        name="Main Account",
        institution_name="Royal Bank of Canada",
        currency="CAD",
        account_number_masked="*****6863",
        status="active",
        is_default=True,
        signing_authorities=["usr_a", "usr_b"],
        approvals_required=2,
        balance=money("15000.00"),
    )
    user = schemas.User(
        **_common("usr", c, "U-7"),
        name="Dana Controller",
        email="dana@example.test",
        role="cfo",
        permissions=["approve_payments", "edit_payees"],
        can_approve=True,
        mfa_enforced=True,
    )
    rule = schemas.ApprovalRule(
        **_common("apr", c, "AR-1"),
        name="Dual approval over 10k",
        kind="threshold",
        applies_to="bill",
        min_amount=money("10000.00"),
        steps=[{"level": 1, "approver_ids": [user.id], "required": 1}],
    )
    vendor = schemas.Vendor(
        **_common("ven", c, "V-1"),
        name="Northern Paper Supply",
        email="ap@northern.test",
        currency="CAD",
        network_connected=True,
        network_id="PN-55",
        address={"line1": "1 Bay St", "city": "Toronto", "country": "CA"},
        payment_methods=[{"type": "eft", "masked": "****4321", "currency": "CAD", "is_default": True}],
        default_payment_method="eft",
    )
    customer = schemas.Customer(
        **_common("cus", c, "CU-1"),
        name="Harbour Clinic",
        currency="CAD",
        payment_methods=[{"type": "pad", "masked": "****9911"}],
        pad_agreement_status="active",
    )
    bill = schemas.Bill(
        **_common("bill", c, "B-1"),
        vendor_id=vendor.id,
        number="INV-2041",
        issue_date=date(2026, 11, 1),
        due_date=date(2026, 12, 1),
        line_items=[
            {"description": "Paper", "quantity": Decimal("3"), "unit_price": money("100.10"),
             "amount": money("300.30")},
            {"description": "Toner", "quantity": Decimal("0.5"), "unit_price": money("1000.00"),
             "amount": money("500.00"), "account_code": "5100"},
        ],
        subtotal=money("800.30"),
        tax=money("104.04"),
        total=money("904.34"),
        amount_paid=money("0.00"),
        amount_due=money("904.34"),
        status="pending_approval",
        approval={
            "status": "pending",
            "steps": [
                {"level": 1, "approver_id": user.id, "approver_name": "Dana Controller",
                 "decision": "approved", "decided_at": T1, "comment": "ok"},
                {"level": 2, "approver_name": "Sam Owner", "decision": "pending"},
            ],
        },
        source="capture",
        capture={"vendor_name": {"value": "Northern Paper", "confidence": "0.97"}},
        attachments=[{"filename": "inv-2041.pdf", "content_type": "application/pdf", "size_bytes": 18211}],
    )  # fmt: skip
    payment = schemas.Payment(
        **_common("pay", c, "P-1"),
        direction="payable",
        vendor_id=vendor.id,
        allocations=[{"bill_id": bill.id, "amount": money("904.34")}],
        amount=money("904.34"),
        method="eft",
        debit_bank_account_id=bank.id,
        debit_account_masked="*****6863",
        credit_account_masked="****4321",
        scheduled_for=date(2026, 11, 4),
        expected_arrival=date(2026, 11, 6),
        status="in_transit",
        status_history=[
            {"status": "scheduled", "status_raw": "Pending", "occurred_at": T0},
            {"status": "in_transit", "status_raw": "Clearing", "occurred_at": T1},
        ],
        trace_number="TRC-88",
        reference="plooto-api:op_123",
        fee=money("0.50"),
        approval={"status": "approved", "steps": [{"approver_name": "Dana", "decision": "approved"}]},
    )
    recurring = schemas.RecurringInvoice(
        **_common("rinv", c, "R-1"),
        customer_id=customer.id,
        name="Monthly retainer",
        frequency="monthly",
        start_date=date(2026, 1, 1),
        next_issue_date=date(2026, 12, 1),
        amount=money("2500.00"),
        status="active",
        uses_pad=True,
    )
    invoice = schemas.Invoice(
        **_common("inv", c, "I-1"),
        customer_id=customer.id,
        number="AR-0009",
        issue_date=date(2026, 11, 1),
        due_date=date(2026, 11, 30),
        terms="net_30",
        line_items=[{"description": "Retainer", "unit_price": money("2500.00"), "amount": money("2500.00")}],
        subtotal=money("2500.00"),
        tax=money("325.00"),
        total=money("2825.00"),
        amount_paid=money("1000.00"),
        amount_due=money("1825.00"),
        status="partially_paid",
        sent_at=T0,
        recurring_invoice_id=recurring.id,
        reminder_schedule=[-3, 0, 7],
        reminders=[{"scheduled_for": date(2026, 11, 27), "status": "scheduled"},
                   {"sent_at": T1, "status": "sent"}],
    )  # fmt: skip
    fx = schemas.FxConversion(
        **_common("fx", c, "FX-1"),
        payment_id=payment.id,
        source=money("1000.00", "CAD"),
        target=money("731.25", "USD"),
        rate=Decimal("0.731245120"),
        fee=money("9.99", "CAD"),
        status="executed",
        quoted_at=T0,
        executed_at=T1,
    )
    txn = schemas.Transaction(
        **_common("txn", c, "T-1"),
        bank_account_id=bank.id,
        payment_id=payment.id,
        kind="debit",
        amount=money("904.34"),
        occurred_on=date(2026, 11, 4),
        status="posted",
        counterparty="Northern Paper Supply",
    )
    doc = schemas.CapturedDocument(
        **_common("doc", c, "D-1"),
        filename="inv-2041.pdf",
        content_type="application/pdf",
        size_bytes=18211,
        status="converted",
        fields={"total": {"value": "904.34", "confidence": "0.99"}},
        bill_id=bill.id,
        received_at=T0,
    )
    mapping = schemas.SyncMapping(
        **_common("smap", c, "SM-1"),
        object_type="bill",
        object_id=bill.id,
        provider="quickbooks",
        external_id="QB-17",
        status="synced",
        last_synced_at=T1,
    )
    return [bank, user, rule, vendor, customer, bill, payment, recurring, invoice, fx, txn, doc, mapping]
