"""Text from the portal that the store's columns cannot hold as it is (longer than the column, or
with a NUL character, which PostgreSQL's text cannot hold) is synced and served whole: the typed
columns hold it clipped and without NUL, the served document holds it as the portal gave it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api.portal_gateway import CLERK, PortalGateway, portal_gateway
from plooto_api.store import models

LONG_NAME = "Long Payee " + "x" * 289  # 300 characters; vendors.name is VARCHAR(200)
NUL_NAME = "Nul\x00Payee Ltd."


@pytest.fixture
def gateway(database_url: str, tmp_path: Path, sandbox: str) -> Iterator[PortalGateway]:
    with portal_gateway(database_url, tmp_path / "data", sandbox) as gw:
        yield gw


def test_long_and_nul_text_syncs_and_is_served_whole(gateway: PortalGateway) -> None:
    company = gateway.company_upstream_id()
    long_vendor = gateway.mutate(action="createVendor", companyId=company, name=LONG_NAME)[0]
    nul_vendor = gateway.mutate(action="createVendor", companyId=company, name=NUL_NAME)[0]
    with gateway.sessions() as session:  # a bill awaiting its first level, where the clerk approves
        bill = session.scalars(
            select(models.Bill)
            .where(models.Bill.connection_id == gateway.connection_id, models.Bill.status == "pending_approval")
            .order_by(models.Bill.id)
        ).first()  # fmt: skip
        assert bill is not None
    comment = "Checked\x00 against the PO " + "y" * 600  # a step's comment is unbounded text
    gateway.mutate(action="approveBill", billId=bill.upstream_id, userEmail=CLERK, comment=comment)

    report = gateway.sync()
    assert report.ok, report.error

    ids = {name: gateway.gateway_id(models.Vendor, upstream_id)
           for name, upstream_id in ((LONG_NAME, long_vendor), (NUL_NAME, nul_vendor))}  # fmt: skip
    for name, vendor_id in ids.items():
        served = gateway.get(f"/vendors/{vendor_id}")
        assert served.status_code == 200, served.text
        assert served.json()["name"] == name
    listed = gateway.get(
        "/vendors", limit=100, company=gateway.get(f"/vendors/{ids[NUL_NAME]}").json()["company_id"]
    )
    assert {v["name"] for v in listed.json()["data"]} >= {LONG_NAME, NUL_NAME}
    steps = gateway.get(f"/bills/{bill.id}").json()["approval"]["steps"]
    assert comment in [step["comment"] for step in steps]
    with gateway.sessions() as session:  # the columns hold what fits (for filters and sorting)
        assert session.get_one(models.Vendor, ids[LONG_NAME]).name == LONG_NAME[:200]
        assert session.get_one(models.Vendor, ids[NUL_NAME]).name == "NulPayee Ltd."

    # Read again from the portal, unchanged there: unchanged here (no update, no event).
    for vendor_id in ids.values():
        fresh = gateway.get(f"/vendors/{vendor_id}", fresh="true")
        assert fresh.status_code == 200, fresh.text
        assert gateway.events("vendor.updated", vendor_id) == 0
    fresh_bill = gateway.get(f"/bills/{bill.id}", fresh="true")
    assert fresh_bill.status_code == 200, fresh_bill.text
    assert comment in [step["comment"] for step in fresh_bill.json()["approval"]["steps"]]
    assert gateway.events("bill.updated", bill.id) == 1  # the approval, once
    assert gateway.sync().ok
