"""An object the portal no longer has is read by id as it was last seen, with `deleted_at` set, so
what refers to it does not point at nothing; lists leave it out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.portal_gateway import PortalGateway, portal_gateway
from plooto_api.store import models


@pytest.fixture
def gateway(database_url: str, tmp_path: Path, sandbox: str) -> Iterator[PortalGateway]:
    with portal_gateway(database_url, tmp_path / "data", sandbox) as gw:
        yield gw


def test_a_bill_deleted_in_the_portal_reads_as_deleted(gateway: PortalGateway) -> None:
    [bill_upstream_id] = gateway.mutate(action="createBills", count=1)
    vendor_upstream_id = gateway.mutate(action="createVendor")[0]
    assert gateway.sync().ok
    bill_id = gateway.gateway_id(models.Bill, bill_upstream_id)
    vendor_id = gateway.gateway_id(models.Vendor, vendor_upstream_id)
    live = gateway.get(f"/bills/{bill_id}").json()
    assert live["deleted_at"] is None

    gateway.mutate(action="deleteBill", billId=bill_upstream_id)
    gateway.mutate(action="deleteVendor", vendorId=vendor_upstream_id)
    gateway.control.post("/clock", json={"advance_hours": 25}).raise_for_status()  # a whole listing is due
    assert gateway.sync().ok

    for path, object_id in (("bills", bill_id), ("vendors", vendor_id)):
        gone = gateway.get(f"/{path}/{object_id}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["deleted_at"] is not None and gone.json()["id"] == object_id
        listed = [
            item["id"]
            for item in gateway.get(f"/{path}", limit=100, updated_since=live["created_at"]).json()["data"]
        ]
        assert object_id not in listed
        # ?fresh=true cannot read it again from the portal: it is served as last seen.
        assert gateway.get(f"/{path}/{object_id}", fresh="true").json()["deleted_at"] is not None
    assert gone.json()["name"]  # as last seen, not a stub
    assert gateway.get("/bills/bill_00000000000000000000000000").status_code == 404
