"""The API's seeded world: two tenants (connection + company) with every object type, and tokens;
and a gateway app over the real sandbox (`portal_client`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from plooto_api import mapping, schemas
from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.services.tokens import create_token
from plooto_api.store import models
from plooto_api.store.base import new_id
from plooto_api.store.database import create_db_engine, session_factory
from plooto_api.store.vault import generate_key
from support import factories

EXTRA_BILLS = 30


def _seed_tenant(session: Session, label: str) -> dict[str, Any]:
    conn = models.Connection(
        id=new_id("conn"), username=f"{label}@firm.test", upstream_url="http://portal.test"
    )
    session.add(conn)
    session.flush()
    company = factories.company(upstream_id=f"C-{label}")
    objects = [company, *factories.every_object(company.id)]
    for obj in objects:
        session.add(mapping.new_row(obj, connection_id=conn.id))
        session.flush()
    vendor = next(o for o in objects if o.object == "vendor")
    bill = next(o for o in objects if o.object == "bill")
    extra = []
    for n in range(EXTRA_BILLS):
        data = bill.model_dump()
        total = Decimal(100 + n * 10)
        money = {"amount": total, "currency": "USD" if n % 5 == 0 else "CAD"}
        zero = {"amount": Decimal(0), "currency": money["currency"]}
        data.update(
            id=new_id("bill"), upstream_id=f"B-{label}-{n}", number=f"N-{n}", line_items=[],
            subtotal=money, tax=zero, total=money, amount_paid=zero, amount_due=money,
            status=["approved", "paid", "pending_approval"][n % 3], due_date=date(2026, 12, 1) + timedelta(days=n),
            approval={"status": ["approved", "approved", "pending"][n % 3], "steps": []},
            vendor_id=vendor.id if n % 2 else None,
        )  # fmt: skip
        extra_bill = schemas.Bill.model_validate(data)
        session.add(mapping.new_row(extra_bill, connection_id=conn.id))
        extra.append(extra_bill)
    return {
        "connection": conn.id,
        "company": company.id,
        "objects": objects,
        "bills": extra,
        "vendor": vendor.id,
    }


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = create_db_engine(database_url)
    sessions: sessionmaker[Session] = session_factory(engine)
    with sessions.begin() as session:
        a, b = _seed_tenant(session, "a"), _seed_tenant(session, "b")

        def token(scopes: list[str], **limits: Any) -> str:
            return create_token(session, scopes=scopes, **limits)[1]

        tokens = {
            "admin": token(["*"]),
            "bills_only": token(["bills:read"]),
            "company_a": token(["*"], company_ids=[a["company"]]),
            "connection_b": token(["*"], connection_id=b["connection"]),
        }
    engine.dispose()
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, vault_key=SecretStr(generate_key())
    )
    with TestClient(create_app(settings, run_jobs=False)) as client:
        yield {"client": client, "a": a, "b": b, "tokens": tokens}


@pytest.fixture
def portal_settings(database_url: str, tmp_path: Path, sandbox: str) -> Settings:
    """A gateway's settings on this test's database, against the real sandbox."""
    return Settings(data_dir=tmp_path / "d", database_url=database_url, upstream_url=sandbox,
                    vault_key=SecretStr(generate_key()))  # fmt: skip


@pytest.fixture
def portal_client(portal_settings: Settings) -> Iterator[TestClient]:
    """The gateway's app over the real sandbox, its jobs not run (a test syncs when it means to)."""
    with TestClient(create_app(portal_settings, run_jobs=False)) as test_client:
        yield test_client
