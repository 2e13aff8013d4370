"""`GET /{resource}/{id}?fresh=true` for every object type against the real sandbox: read again from
the portal, or, for a type the portal does not read one at a time, a documented 400; never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api.portal_gateway import PortalGateway, portal_gateway
from plooto_api.services.objects import RESOURCES
from plooto_api.store import models
from plooto_api.upstream import FETCHABLE_TYPES


@pytest.fixture
def gateway(database_url: str, tmp_path: Path, sandbox: str) -> Iterator[PortalGateway]:
    with portal_gateway(database_url, tmp_path / "data", sandbox) as gw:
        yield gw


def test_fresh_reads_of_every_object_type(gateway: PortalGateway) -> None:
    assert {r.object_type for r in RESOURCES} - FETCHABLE_TYPES == {"sync_mapping"}  # what this covers
    openapi = gateway.client.app.openapi()
    checked = set()
    for resource in RESOURCES:
        listed = gateway.get(f"/{resource.path}", limit=1).json()["data"]
        assert listed, f"the seed has {resource.path}"
        object_id = listed[0]["id"]
        fresh = gateway.get(f"/{resource.path}/{object_id}", fresh="true")
        documented = openapi["paths"][f"/{resource.path}/{{object_id}}"]["get"]
        if resource.object_type in FETCHABLE_TYPES:
            assert fresh.status_code == 200, (resource.path, fresh.text)
            assert fresh.json()["id"] == object_id
            assert fresh.json() == gateway.get(f"/{resource.path}/{object_id}").json()
            assert "fresh_not_supported" not in str(documented)
        else:
            assert fresh.status_code == 400, (resource.path, fresh.text)
            error = fresh.json()["error"]
            assert (error["code"], error["param"]) == ("fresh_not_supported", "fresh")
            assert resource.object_type in error["message"]
            assert "fresh_not_supported" in documented["description"] and "400" in documented["responses"]
            # The same for an id the caller cannot see (nothing is looked up first), and the stored
            # copy is still served without it.
            assert gateway.get(f"/{resource.path}/smap_unknown", fresh="true").status_code == 400
            assert gateway.get(f"/{resource.path}/{object_id}").status_code == 200
        checked.add(resource.object_type)
    assert len(checked) == len(RESOURCES)


def test_a_fresh_read_of_a_slow_portal_answers_503_within_its_time(
    database_url: str, tmp_path: Path, sandbox: str
) -> None:
    # The read's retries (five tries of up to 30 s) held the caller for 150 s, or past its own timeout.
    import time

    with portal_gateway(database_url, tmp_path / "slow", sandbox, fresh_read_timeout_seconds=2.0) as gw:
        with gw.sessions() as session:
            bill = session.scalars(select(models.Bill).order_by(models.Bill.id)).first()
            assert bill is not None
        gw.control.post("/faults", json={"kind": "latency", "latencyMs": 45000,
                                         "pathPattern": f"/bills/{bill.upstream_id}$"}).raise_for_status()  # fmt: skip
        started = time.monotonic()
        response = gw.get(f"/bills/{bill.id}", fresh="true")
        took = time.monotonic() - started
        gw.control.delete("/faults").raise_for_status()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and "within 2 s" in error["message"]
    assert took < 20, took  # (it was 150 s)


def test_a_fresh_invoice_has_its_reminders_as_the_portal_has_them(gateway: PortalGateway) -> None:
    # Paid, its reminder came due and was cancelled in the portal; ?fresh=true served the invoice
    # paid and the reminder still scheduled (reminders are a feed of their own, read by the next sync).
    invoices = gateway.get("/invoices", status="sent", limit=100).json()["data"]
    invoice = next(i for i in invoices if any(r["status"] == "scheduled" for r in i["reminders"]))
    due = min(
        (r for r in invoice["reminders"] if r["status"] == "scheduled"), key=lambda r: r["scheduled_for"]
    )
    gateway.mutate(action="customerPays", invoiceId=invoice["upstream_id"])
    gateway.control.post("/clock", json={"set": f"{due['scheduled_for']}T23:00:00Z"}).raise_for_status()
    fresh = gateway.get(f"/invoices/{invoice['id']}", fresh="true").json()
    assert fresh["status"] == "paid", fresh["status"]
    [reminder] = [r for r in fresh["reminders"] if r["upstream_id"] == due["upstream_id"]]
    assert reminder["status"] == "cancelled", reminder
