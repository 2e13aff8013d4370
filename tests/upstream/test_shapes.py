"""Drift detection's shape check: the fast exact-match test agrees with the walk that explains."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from plooto_api.upstream import UpstreamChanged, portal
from plooto_api.upstream._shapes import ListOf, Shape, _compile_shape, _conforms, check_shape, differences

STAMPS = {"lastModified": "2026-03-02T10:00:00Z", "createdDate": "2026-03-01T09:30:00.123+00:00"}
BILL: dict[str, Any] = {
    "billId": "B-1", "vendorId": "V-1", "billNumber": None, "currency": "CAD", "issueDate": "2026-03-01",
    "dueDate": None,
    "lineItems": [{"lineItemId": "L-1", "description": "Rent", "quantity": 1, "unitPrice": Decimal("10.50"),
                   "amount": Decimal("10.50")}],
    "totalAmount": Decimal("10.50"), "paidAmount": 0, "scheduledAmount": 0, "openBalance": Decimal("10.50"),
    "status": "Draft", "source": "Manual", "memo": None, "createdByUserId": None, "approvalPolicyId": None,
    "approvalSteps": [{"stepId": "S-1", "level": 1, "approverUserId": None, "approverDisplayName": None,
                       "status": "Pending", "decisionDate": None, "comment": None}],
    "attachments": [], "capturedDocument": None, "paymentIds": ["P-1"], "accountingIds": {"x": [1, None]},
    **STAMPS,
}  # fmt: skip
COMPANY: dict[str, Any] = {
    "companyId": "C-1", "name": "Northwind", "country": "CA", "baseCurrency": "CAD", "status": "Active",
    "role": "Admin", "permissions": ["view"], "outstandingItems": 3, "accountingProvider": None,
    "isAccountingFirm": False,
}  # fmt: skip


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(target: dict[str, Any]) -> None:
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(target: dict[str, Any]) -> None:
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


# (what changes, the message the check gives or None when it still conforms exactly)
BILL_CASES: list[tuple[Callable[[dict[str, Any]], None], str | None]] = [
    (lambda bill: None, None),
    (_set(("totalAmount",), "10.50"), "bill.totalAmount: expected number, got str"),
    (_set(("totalAmount",), True), "bill.totalAmount: expected number, got bool"),
    (_set(("totalAmount",), None), "bill.totalAmount: expected number, got null"),
    (_set(("totalAmount",), 7), None),
    (_drop(("status",)), "bill: missing field 'status'"),
    (_set(("issueDate",), "01 Mar 2026"), "bill.issueDate: expected date, got str"),
    (_set(("issueDate",), None), None),
    (_set(("lastModified",), "2026-03-02 10:00"), "bill.lastModified: expected ts, got str"),
    (_set(("lineItems", 0, "quantity"), "1"), "bill.lineItems[].quantity: expected number, got str"),
    (_set(("lineItems", 0, "accountCode"), None), None),  # optional and nullable
    (_set(("lineItems",), {}), "bill.lineItems: expected list, got dict"),
    (_set(("approvalSteps", 0, "level"), True), "bill.approvalSteps[].level: expected int, got bool"),
    (_set(("approvalSteps", 0, "level"), Decimal("1.5")), "bill.approvalSteps[].level: expected int, got number"),
    (_set(("paymentIds",), ["P-1", 2]), "bill.paymentIds[]: expected str, got number"),
    (_set(("accountingIds",), []), "bill.accountingIds: expected dict, got list"),
    (_set(("capturedDocument",), {"anything": Decimal(1)}), None),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "message"), BILL_CASES)
def test_bill_shape(mutate: Callable[[dict[str, Any]], None], message: str | None) -> None:
    bill = copy.deepcopy(BILL)
    mutate(bill)
    assert _conforms(_compile_shape(portal.BILL), bill) is (message is None)
    if message is None:
        assert check_shape(portal.BILL, bill, object_type="bill") == []
        return
    with pytest.raises(UpstreamChanged) as raised:
        check_shape(portal.BILL, bill, object_type="bill")
    assert raised.value.differences == [message]


def test_extra_fields_are_reported_but_not_fatal() -> None:
    bill = {**copy.deepcopy(BILL), "newField": 1}
    bill["lineItems"][0]["taxCode"] = "GST"
    assert not _conforms(_compile_shape(portal.BILL), bill)
    assert check_shape(portal.BILL, bill, object_type="bill") == [
        "bill.lineItems[]: unexpected field 'taxCode'",
        "bill: unexpected field 'newField'",
    ]


def test_optional_field_may_be_absent_but_not_null_unless_nullable() -> None:
    shape = Shape(
        "thing",
        {"id": "str", "balances?": ListOf(Shape("balance", {"currency": "str", "balance": "number"}))},
    )
    node = _compile_shape(shape)
    assert _conforms(node, {"id": "T-1"})  # balances? absent
    assert _conforms(node, {"id": "T-1", "balances": [{"currency": "CAD", "balance": Decimal("1.00")}]})
    assert differences(shape, {"id": "T-1", "balances": None}) == (
        ["thing.balances: expected list, got null"],
        [],
    )
    assert not _conforms(node, {"id": "T-1", "balances": None})
    assert not _conforms(node, {"id": "T-1", "balances": [{"currency": "CAD"}]})


def test_a_company_page_must_hold_its_wallets_which_the_listing_leaves_out() -> None:
    assert _conforms(_compile_shape(portal.COMPANY), COMPANY)
    assert differences(portal.COMPANY_PAGE, COMPANY) == (
        ["company: missing field 'plootoInstantBalances'"],
        [],
    )
    page = {**COMPANY, "plootoInstantBalances": [{"currency": "CAD", "balance": Decimal("1.00")}]}
    assert _conforms(_compile_shape(portal.COMPANY_PAGE), page)


def test_not_an_object() -> None:
    assert not _conforms(_compile_shape(portal.BILL), ["not", "a", "bill"])
    with pytest.raises(UpstreamChanged, match="expected object, got list"):
        check_shape(portal.BILL, ["not", "a", "bill"], object_type="bill")
