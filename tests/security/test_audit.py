"""The audit log: GET /audit (scope, cursor, filters, tenant limits) and `plooto-api audit verify`,
which names the first edited or deleted entry."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.cli.audit import run_verify
from plooto_api.config import Settings
from plooto_api.services import audit
from plooto_api.store.database import transaction
from plooto_api.store.models import AuditEntry
from security.conftest import bearer

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


@pytest.fixture
def entries(sessions: sessionmaker[Session]) -> list[AuditEntry]:
    made = []
    for n in range(7):
        with transaction(sessions) as session:
            made.append(audit.append(
                session, actor="tok_a" if n % 2 else "system",
                action="create_payment.requested" if n < 4 else "approve_bill.succeeded",
                object_type="payment", object_id=f"pay_{n}", company_id="co_1" if n < 5 else "co_2",
                detail={"amount": {"amount": f"{n}00.00", "currency": "CAD"}},
                upstream_evidence={"trace_id": f"t-{n}"},
            ))  # fmt: skip
    return made


def _verify(settings: Settings, **kwargs: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run_verify(settings, Console(file=out, width=300), **kwargs)
    return code, out.getvalue()


def test_get_audit_pages_oldest_first_with_a_cursor(
    client: TestClient, make_token: Callable[..., str], entries: list[AuditEntry]
) -> None:
    headers = bearer(make_token(["audit:read"]))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/audit", headers=headers, params=params).json()
        seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [e.id for e in entries]
    first = client.get("/audit", headers=headers, params={"limit": 1}).json()["data"][0]
    assert first["object"] == "audit_entry" and first["prev_hash"] is None and len(first["hash"]) == 64
    assert first["upstream_evidence"] == {"trace_id": "t-0"}


def test_get_audit_filters(
    client: TestClient, make_token: Callable[..., str], entries: list[AuditEntry]
) -> None:
    headers = bearer(make_token(["audit:read"]))

    def ids(**params: str) -> list[str]:
        response = client.get("/audit", headers=headers, params=params)
        assert response.status_code == 200, response.text
        return [e["object_id"] for e in response.json()["data"]]

    assert ids(action="approve_bill.*") == ["pay_4", "pay_5", "pay_6"]
    assert ids(action="create_payment.requested", actor="tok_a") == ["pay_1", "pay_3"]
    assert ids(object_id="pay_2") == ["pay_2"]
    assert ids(company="co_2") == ["pay_5", "pay_6"]
    assert ids(occurred_from="2000-01-01T00:00:00Z", occurred_to="2999-01-01T00:00:00Z") == [
        f"pay_{n}" for n in range(7)
    ]
    assert ids(occurred_from="2999-01-01T00:00:00Z") == []
    assert client.get("/audit", headers=headers, params={"occurred_from": "2020-01-01T00:00:00"}
                      ).status_code == 400  # fmt: skip
    assert client.get("/audit", headers=headers, params={"cursor": "nope"}).status_code == 400


def test_get_audit_needs_the_admin_scope_and_respects_company_limits(
    client: TestClient, make_token: Callable[..., str], entries: list[AuditEntry]
) -> None:
    assert client.get("/audit").status_code == 401
    reader = make_token(["bills:read", "payments:read", "events:read"])
    assert client.get("/audit", headers=bearer(reader)).status_code == 403
    limited = make_token(["audit:read"], company_ids=["co_2"])
    data = client.get("/audit", headers=bearer(limited)).json()["data"]
    assert [e["company_id"] for e in data] == ["co_2", "co_2"]


def test_verify_reports_an_intact_chain(settings: Settings, entries: list[AuditEntry]) -> None:
    code, out = _verify(settings)
    assert code == 0 and out.startswith("7 entries, chain intact")
    assert entries[-1].hash in out


def test_verify_names_an_edited_entry(
    settings: Settings, sessions: sessionmaker[Session], entries: list[AuditEntry]
) -> None:
    with transaction(sessions) as session:  # someone with database access "corrects" an amount
        session.execute(update(AuditEntry).where(AuditEntry.id == entries[2].id)
                        .values(detail={"amount": {"amount": "1.00", "currency": "CAD"}}))  # fmt: skip
    code, out = _verify(settings)
    assert code == 1
    assert f"entry {entries[2].seq} ({entries[2].id}): hash does not match its content" in out


def test_verify_names_the_entry_after_a_deleted_one(
    settings: Settings, sessions: sessionmaker[Session], entries: list[AuditEntry]
) -> None:
    with transaction(sessions) as session:
        session.execute(delete(AuditEntry).where(AuditEntry.id == entries[3].id))
    code, out = _verify(settings)
    assert code == 1 and f"({entries[4].id}): prev_hash does not match" in out


def test_verify_detects_a_rewritten_chain_and_a_dropped_tail_against_a_kept_head(
    settings: Settings, sessions: sessionmaker[Session], entries: list[AuditEntry]
) -> None:
    head = entries[-1].hash
    with transaction(sessions) as session:  # the newest entry removed: the rest still chains
        session.execute(delete(AuditEntry).where(AuditEntry.id == entries[-1].id))
    assert _verify(settings)[0] == 0
    code, out = _verify(settings, expect_head=head)
    assert code == 1 and "no longer in the log" in out
    assert _verify(settings, expect_head=entries[-2].hash)[0] == 0


def test_the_cli_exit_codes(
    settings: Settings, sessions: sessionmaker[Session], entries: list[AuditEntry]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOTO_API_")}
    env["PLOOTO_API_DATABASE_URL"] = str(settings.database_url)
    ok = subprocess.run([*CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "7 entries, chain intact" in ok.stdout, ok.stderr
    with transaction(sessions) as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == entries[0].id).values(actor="tok_other"))
    bad = subprocess.run([*CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and entries[0].id in bad.stdout
