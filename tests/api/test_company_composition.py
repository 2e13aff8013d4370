"""A company shows its bank accounts and a summary of its active approval rules (DESIGN §3), put
together from the mirrored accounts and rules when it is read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.portal_gateway import PortalGateway, portal_gateway
from plooto_api.store import models


@pytest.fixture
def gateway(database_url: str, tmp_path: Path, sandbox: str) -> Iterator[PortalGateway]:
    with portal_gateway(database_url, tmp_path / "data", sandbox) as gw:
        yield gw


def _all(gateway: PortalGateway, path: str, **params: str) -> list[dict[str, Any]]:
    body = gateway.get(path, limit=100, **params).json()
    assert not body["has_more"]
    return list(body["data"])


def test_a_company_lists_its_bank_accounts_and_active_rules(gateway: PortalGateway) -> None:
    companies = _all(gateway, "/companies")
    assert len(companies) >= 2
    seen_rules = 0
    for company in companies:
        accounts = _all(gateway, "/bank_accounts", company=company["id"])
        assert accounts, company["name"]
        listed = company["bank_accounts"]
        assert sorted(a["id"] for a in listed) == sorted(a["id"] for a in accounts)
        assert listed[0]["is_default"] == any(a["is_default"] for a in accounts)  # the default comes first
        by_id = {a["id"]: a for a in accounts}
        for summary in listed:
            full = by_id[summary["id"]]
            assert summary == {k: full[k] for k in ("id", "name", "kind", "currency", "status", "is_default")}
            assert "account_number_masked" not in summary and "balance" not in summary
        active = [r for r in _all(gateway, "/approval_rules", company=company["id"]) if r["active"]]
        assert sorted(r["id"] for r in company["approval_policy"]["rules"]) == sorted(r["id"] for r in active)
        for rule in company["approval_policy"]["rules"]:
            assert set(rule) == {"id", "name", "kind", "applies_to", "min_amount", "max_amount",
                                 "bank_account_id", "approvals_required"}  # fmt: skip
        seen_rules += len(active)
        assert company["approval_policy"]["role"]  # what the login may do there is kept
        assert company["connection_id"] == gateway.connection_id  # which login's copy this is
        # The object read by id is the same as in the list.
        assert gateway.get(f"/companies/{company['id']}").json() == company
    assert seen_rules  # the seed has rules to summarize
    assert _all(gateway, "/companies", connection=gateway.connection_id) == companies
    assert _all(gateway, "/companies", connection="conn_other") == []


def test_an_inactive_or_deleted_account_leaves_the_company(gateway: PortalGateway) -> None:
    company = _all(gateway, "/companies")[0]
    with gateway.sessions() as session:
        account = session.scalars(
            select(models.BankAccount).where(models.BankAccount.company_id == company["id"]).order_by(models.BankAccount.id)
        ).first()  # fmt: skip
        assert account is not None
        rule = session.scalars(
            select(models.ApprovalRule).where(models.ApprovalRule.company_id == company["id"],
                                              models.ApprovalRule.active.is_(True))
        ).first()  # fmt: skip
        assert rule is not None
        account.deleted_at = account.updated_at
        rule.active = False
        session.commit()
        account_id, rule_id = account.id, rule.id
    again = gateway.get(f"/companies/{company['id']}").json()
    assert account_id not in [a["id"] for a in again["bank_accounts"]]
    assert rule_id not in [r["id"] for r in again["approval_policy"]["rules"]]
    assert len(again["bank_accounts"]) == len(company["bank_accounts"]) - 1


def test_a_company_event_carries_the_company_as_stored(gateway: PortalGateway) -> None:
    company = _all(gateway, "/companies")[0]
    events = gateway.get("/events", type="company.created", limit=100).json()["data"]
    created = next(e["data"] for e in events if e["object_id"] == company["id"])
    assert created["bank_accounts"] is None and created["connection_id"] is None
    assert "rules" not in created["approval_policy"]
