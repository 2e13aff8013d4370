"""Write dates the portal would refuse are a 400 invalid_request naming the field, before anything
is recorded: a debit or a scheduled send at most a year ahead, bill and invoice dates within ten
years of the portal's today (the sandbox states the same reach, its README §7)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from plooto_api.store import models
from plooto_api.upstream import DOCUMENT_DATE_RANGE, SCHEDULE_HORIZON, business_today

TODAY = business_today()
LATEST_DEBIT = TODAY + SCHEDULE_HORIZON
DAYS = timedelta(days=2)  # beyond the bound even if the portal's day turns while the tests run
TOO_FAR = ["9999-12-31", (LATEST_DEBIT + DAYS).isoformat()]
OUT_OF_RANGE = ["9999-12-31", "0001-01-01", (TODAY + DOCUMENT_DATE_RANGE + DAYS).isoformat(),
                (TODAY - DOCUMENT_DATE_RANGE - DAYS).isoformat()]  # fmt: skip


def _bill(world: dict[str, Any]) -> str:
    bill: str = next(b.id for b in world["a"]["bills"] if b.status == "approved")
    return bill


def _recorded(world: dict[str, Any]) -> tuple[int, int]:
    with world["client"].app.state.sessions() as session:
        operations = session.scalar(select(func.count()).select_from(models.Operation))
        audit = session.scalar(select(func.count()).select_from(models.AuditEntry))
    return int(operations or 0), int(audit or 0)


def _refused(world: dict[str, Any], path: str, param: str, **kwargs: Any) -> dict[str, Any]:
    before = _recorded(world)
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}", "Idempotency-Key": f"k-{param}"}
    response = world["client"].post(path, headers=headers, **kwargs)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param, error
    assert error["message"].startswith(f"{param}: must be ")
    assert _recorded(world) == before
    return error


@pytest.mark.parametrize("day", TOO_FAR)
def test_a_payment_scheduled_more_than_a_year_ahead(world: dict[str, Any], day: str) -> None:
    # The tester's repro: 9999-12-31 was accepted (202), then crashed the portal on every send.
    error = _refused(world, "/create_payment", "scheduled_for",
                     json={"bill_id": _bill(world), "amount": "1.00", "scheduled_for": day})  # fmt: skip
    assert (business_today() + SCHEDULE_HORIZON).isoformat() in error["message"]


def test_a_payment_scheduled_a_year_ahead_passes_the_date_check(world: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    latest = (business_today() + SCHEDULE_HORIZON).isoformat()
    response = world["client"].post("/create_payment", headers=headers,
                                    json={"bill_id": "bill_missing", "scheduled_for": latest})  # fmt: skip
    assert response.status_code == 404 and response.json()["error"]["param"] == "bill_id"


@pytest.mark.parametrize("field", ["issue_date", "due_date"])
@pytest.mark.parametrize("day", OUT_OF_RANGE)
def test_bill_dates_out_of_range(world: dict[str, Any], field: str, day: str) -> None:
    body = {"vendor_id": world["a"]["vendor"], "number": "N-far", "issue_date": TODAY.isoformat(),
            "due_date": TODAY.isoformat(), "lines": [{"description": "Paper", "amount": "10.00"}], field: day}  # fmt: skip
    _refused(world, "/create_bill", field, json=body)
    _refused(world, "/create_bill", field, files={"bill": (None, json.dumps(body))})


@pytest.mark.parametrize(
    "extra,param",
    [
        *[({"issue_date": day}, "issue_date") for day in OUT_OF_RANGE],
        *[({"due_date": day}, "due_date") for day in OUT_OF_RANGE],
        *[({"send": "scheduled", "scheduled_send_date": day}, "scheduled_send_date") for day in TOO_FAR],
        ({"recurring": {"frequency": "monthly", "end_date": "9999-12-31"}}, "recurring.end_date"),
    ],
)
def test_invoice_dates_out_of_range(world: dict[str, Any], extra: dict[str, Any], param: str) -> None:
    customer = next(o.id for o in world["a"]["objects"] if o.object == "customer")
    body = {"customer_id": customer, "lines": [{"description": "Retainer", "amount": "10.00"}], **extra}
    _refused(world, "/create_invoice", param, json=body)
