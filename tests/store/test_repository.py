"""Tenant scoping and keyset pagination of the object repository."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from plooto_api import mapping
from plooto_api.store import models
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.bulk import ids_by_upstream_id
from plooto_api.store.pagination import InvalidCursor, PageRequest, decode_cursor, encode_cursor
from plooto_api.store.repository import ObjectRepository
from plooto_api.store.scope import AccessScope
from support import factories


def _vendor(company_id: str, n: int) -> models.Vendor:
    obj = factories.every_object(company_id)[3]
    assert obj.object == "vendor"
    obj = obj.model_copy(
        update={"id": new_id("ven"), "upstream_id": f"V-{company_id}-{n}", "name": f"V{n:03}"}
    )
    return mapping.new_row(obj, connection_id="")


@pytest.fixture
def two_tenants(sessions: sessionmaker[Session]) -> dict[str, list[str]]:
    """Two connections, each with a company holding vendors; returns ids by company."""
    ids: dict[str, list[str]] = {}
    with sessions.begin() as session:
        for label in ("a", "b"):
            conn = models.Connection(id=new_id("conn"), username=f"{label}@x.test", upstream_url="http://x")
            session.add(conn)
            session.flush()
            company = factories.company(upstream_id=f"C-{label}")
            session.add(mapping.new_row(company, connection_id=conn.id))
            session.flush()
            ids[company.id] = []
            for n in range(30):
                row = _vendor(company.id, n)
                row.connection_id = conn.id
                session.add(row)
                ids[company.id].append(row.id)
    return ids


def test_cursor_walk_returns_every_row_once_in_order(
    sessions: sessionmaker[Session], two_tenants: dict[str, list[str]]
) -> None:
    company_id, expected = next(iter(two_tenants.items()))
    scope = AccessScope(company_ids=frozenset({company_id}))
    seen: list[str] = []
    cursor = None
    with sessions() as session:
        repo = ObjectRepository(session, models.Vendor)
        while True:
            page = repo.list(scope, PageRequest(limit=7, cursor=cursor))
            seen += [row.id for row in page.items]
            if not page.has_more:
                assert page.next_cursor is None
                break
            cursor = page.next_cursor
    assert seen == sorted(expected)
    assert len(seen) == 30


def test_scope_hides_other_tenants(
    sessions: sessionmaker[Session], two_tenants: dict[str, list[str]]
) -> None:
    (company_a, vendors_a), (company_b, vendors_b) = two_tenants.items()
    scope_a = AccessScope(company_ids=frozenset({company_a}))
    with sessions() as session:
        repo = ObjectRepository(session, models.Vendor)
        assert repo.get(vendors_a[0], scope_a) is not None
        assert repo.get(vendors_b[0], scope_a) is None  # another tenant's object does not exist for us
        page = repo.list(scope_a, PageRequest(limit=100))
        assert {row.company_id for row in page.items} == {company_a}
        companies = ObjectRepository(session, models.Company).list(scope_a, PageRequest())
        assert [c.id for c in companies.items] == [company_a]
        conn_b = session.get(models.Company, company_b)
        assert conn_b is not None
        by_connection = AccessScope(connection_ids=frozenset({conn_b.connection_id}))
        assert repo.get(vendors_a[0], by_connection) is None
        assert len(repo.list(by_connection, PageRequest(limit=100)).items) == 30


def test_filters_and_deleted_rows(sessions: sessionmaker[Session], two_tenants: dict[str, list[str]]) -> None:
    _, vendors_a = next(iter(two_tenants.items()))
    with sessions.begin() as session:
        row = session.get(models.Vendor, vendors_a[0])
        assert row is not None
        row.deleted_at = utcnow() - timedelta(minutes=1)
    with sessions() as session:
        repo = ObjectRepository(session, models.Vendor)
        scope = AccessScope.unrestricted()
        assert repo.get(vendors_a[0], scope) is None
        page = repo.list(scope, PageRequest(limit=100), [models.Vendor.name == "V005"])
        assert len(page.items) == 2  # one per tenant
        assert repo.get_by_upstream_id(row.connection_id, row.upstream_id) is not None  # sync still sees it


def test_cursors_are_opaque_and_checked() -> None:
    assert decode_cursor(encode_cursor("ven_abc", "vendors"), "vendors") == "ven_abc"
    for bad in ("", "not-a-cursor", "eyJ2IjoyfQ", encode_cursor("x", "vendors")[:-3] + "!!!"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad, "vendors")
    # Another list's cursor would end this one early or start it again.
    with pytest.raises(InvalidCursor, match="another list"):
        decode_cursor(encode_cursor("pay_abc", "payments"), "bills")
    # A cursor given before cursors named their list (an events poller keeps one) still resumes.
    legacy = base64.urlsafe_b64encode(b'{"v":1,"after":"42"}').decode().rstrip("=")
    assert decode_cursor(legacy, "events") == "42"
    with pytest.raises(ValueError):
        PageRequest(limit=0)
    with pytest.raises(ValueError):
        PageRequest(limit=101)


def test_ids_by_upstream_id_finds_a_connections_rows_only(
    sessions: sessionmaker[Session], two_tenants: dict[str, list[str]]
) -> None:
    table = models.Vendor.__table__
    with sessions() as session:
        vendors = {row.upstream_id: row for row in session.query(models.Vendor)}
        (company_a, ids_a), (company_b, _) = two_tenants.items()
        connection_a = session.get(models.Company, company_a).connection_id  # type: ignore[union-attr]
        of_a = [u for u, row in vendors.items() if row.company_id == company_a]
        of_b = [u for u, row in vendors.items() if row.company_id == company_b]
        asked = [*of_a[:3], *of_b[:2], "V-nowhere", of_a[0]]  # another tenant's, absent, repeated
        found = ids_by_upstream_id(session, table, connection_a, asked)  # type: ignore[arg-type]
        assert found == {u: vendors[u].id for u in of_a[:3]}
        assert set(found.values()) <= set(ids_a)
        assert ids_by_upstream_id(session, table, connection_a, []) == {}  # type: ignore[arg-type]
        many = [f"V-{company_a}-{n}" for n in range(30)] * 40  # past one IN list's worth of ids
        assert len(ids_by_upstream_id(session, table, connection_a, many)) == 30  # type: ignore[arg-type]
