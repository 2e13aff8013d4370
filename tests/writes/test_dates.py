"""Write dates the portal would refuse are a 400 invalid_request naming the field, before anything
is recorded: a debit or a scheduled send at most a year ahead, bill and invoice dates within ten
years of the portal's today (the sandbox states the same reach, its README §7). The portal's today,
not this machine's: the two differ (the sandbox's clock starts on 2026-03-02 and moves when told)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from plooto_api.store import models
from plooto_api.upstream import DOCUMENT_DATE_RANGE, SCHEDULE_HORIZON, business_today

from .conftest import Gateway

DAYS = timedelta(days=2)  # past the bound and the check's day of slack


def _portal_today(gw: Gateway) -> date:
    return date.fromisoformat(gw.control.get("/clock").json()["businessDate"])


def _recorded(gw: Gateway) -> tuple[int, int]:
    with gw.sessions()() as session:
        operations = session.scalar(select(func.count()).select_from(models.Operation))
        audit = session.scalar(select(func.count()).select_from(models.AuditEntry))
    return int(operations or 0), int(audit or 0)


def _refused(gw: Gateway, path: str, param: str, **kwargs: Any) -> str:
    """The refusal's message, once checked to be a 400 naming `param` that recorded nothing."""
    before = _recorded(gw)
    headers = {**gw.headers, "Idempotency-Key": f"k-{param}"}
    response = gw.client.post(path, headers=headers, **kwargs)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param, error
    assert error["message"].startswith(f"{param}: must be ")
    assert _recorded(gw) == before
    return str(error["message"])


def _payment(gw: Gateway, scheduled_for: date) -> httpx.Response:
    bill = gw.bill(status="approved", currency="CAD")
    return gw.post("/create_payment", {"bill_id": bill.id, "scheduled_for": scheduled_for.isoformat()})


def test_a_payment_past_the_portals_year_is_refused_though_this_machines_clock_allows_it(
    gateway: Gateway,
) -> None:
    # The tester's repro: the portal's today (2026-03-02 here) is behind this machine's, and a debit
    # date within a year of the machine's day but not of the portal's was recorded, then refused.
    today = _portal_today(gateway)
    assert today + SCHEDULE_HORIZON + DAYS <= business_today() + SCHEDULE_HORIZON
    bill = gateway.bill(status="approved", currency="CAD")
    message = _refused(gateway, "/create_payment", "scheduled_for",
                       json={"bill_id": bill.id, "scheduled_for": (today + SCHEDULE_HORIZON + DAYS).isoformat()})  # fmt: skip
    assert (today + SCHEDULE_HORIZON).isoformat() in message


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
def test_absurd_dates_are_refused(gateway: Gateway, day: str) -> None:
    # 9999-12-31 was once accepted (202), then crashed the portal on every send.
    bill = gateway.bill(status="approved", currency="CAD")
    if day == "9999-12-31":
        _refused(gateway, "/create_payment", "scheduled_for", json={"bill_id": bill.id, "scheduled_for": day})
    vendor = bill.vendor_id
    for field in ("issue_date", "due_date"):
        body = {"vendor_id": vendor, "number": f"N-{field}", "issue_date": "2026-03-02", "due_date": "2026-03-30",
                "lines": [{"description": "Paper", "amount": "10.00"}], field: day}  # fmt: skip
        _refused(gateway, "/create_bill", field, json=body)
        _refused(gateway, "/create_bill", field, files={"bill": (None, json.dumps(body))})


def test_a_date_within_the_portals_year_passes_when_its_clock_is_ahead_of_this_machine(
    make_gateway: Callable[..., Gateway], sandbox: str
) -> None:
    # The reverse: with the portal's clock ahead of this machine's, a debit date the portal takes
    # was refused as more than a year ahead by this machine's day.
    ahead = business_today() + timedelta(days=200)
    with httpx.Client(base_url=f"{sandbox}/__sandbox", timeout=120) as control:
        control.post("/clock", json={"set": f"{ahead.isoformat()}T14:00:00Z"}).raise_for_status()
    gateway = make_gateway()  # syncs, and so hears the portal's clock
    today = _portal_today(gateway)
    day = today + SCHEDULE_HORIZON - timedelta(days=5)
    assert day > business_today() + SCHEDULE_HORIZON + DAYS
    response = _payment(gateway, day)
    assert response.status_code in (201, 202), response.text
    operation = response.json() if response.status_code == 202 else None
    assert operation is None or gateway.wait_operation(operation["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"issue_date": "far-behind"}, "issue_date"),
        ({"due_date": "far-ahead"}, "due_date"),
        ({"send": "scheduled", "scheduled_send_date": "year-ahead"}, "scheduled_send_date"),
        ({"recurring": {"frequency": "monthly", "end_date": "far-ahead"}}, "recurring.end_date"),
    ],
)
def test_invoice_dates_out_of_the_portals_reach(gateway: Gateway, extra: dict[str, Any], param: str) -> None:
    today = _portal_today(gateway)
    days = {"far-behind": today - DOCUMENT_DATE_RANGE - DAYS, "far-ahead": today + DOCUMENT_DATE_RANGE + DAYS,
            "year-ahead": today + SCHEDULE_HORIZON + DAYS}  # fmt: skip

    def dated(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: dated(item) for key, item in value.items()}
        return days[value].isoformat() if value in days else value

    with gateway.sessions()() as session:
        customer = session.scalars(select(models.Customer.id).order_by(models.Customer.id)).first()
    body = {
        "customer_id": customer,
        "lines": [{"description": "Retainer", "amount": "10.00"}],
        **dated(extra),
    }
    _refused(gateway, "/create_invoice", param, json=body)


def test_a_draft_scheduled_to_be_sent_says_when(gateway: Gateway) -> None:
    # The day was sent to the portal and not read back: the invoice looked like any draft.
    day = _portal_today(gateway) + timedelta(days=3)
    with gateway.sessions()() as session:
        customer = session.scalars(select(models.Customer.id).order_by(models.Customer.id)).first()
    body = {"customer_id": customer, "lines": [{"description": "Retainer", "amount": "10.00"}],
            "send": "scheduled", "scheduled_send_date": day.isoformat()}  # fmt: skip
    response = gateway.post("/create_invoice", body, key="scheduled-send")
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert invoice["status"] == "draft" and invoice["scheduled_send_date"] == day.isoformat()
    assert gateway.get(f"/invoices/{invoice['id']}").json()["scheduled_send_date"] == day.isoformat()
