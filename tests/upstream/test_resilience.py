"""Session loss mid-use, injected faults, drift, and incremental listing against the real sandbox."""

from __future__ import annotations

from datetime import datetime

import pytest

from plooto_api.upstream import (
    ChangePage,
    PortalSession,
    ThrottleConfig,
    UpstreamChanged,
    UpstreamUnavailable,
)
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import Control, first_company, run


async def _all_pages(
    session: PortalSession, company: str, feed: str, since: datetime | None = None
) -> list[ChangePage]:
    pages = [await session.list_changes(company, feed, modified_since=since, page_size=10)]
    while pages[-1].has_more:
        pages.append(
            await session.list_changes(
                company, feed, modified_since=since, page_number=len(pages) + 1, page_size=10
            )
        )
    return pages


def test_session_expiry_mid_listing_relogs_in_once_and_completes(
    make_session: SessionFactory, control: Control
) -> None:
    session = make_session()

    async def scenario() -> list[str]:
        company = await first_company(session)
        first = await session.list_changes(company, "bills", modified_since=None, page_size=10)
        control.advance(advance_minutes=20)  # past the 15-minute idle timeout
        second = await session.list_changes(
            company, "bills", modified_since=None, page_number=2, page_size=10
        )
        third = await session.list_changes(company, "bills", modified_since=None, page_number=3, page_size=10)
        await session.aclose()
        return [r.upstream_id for p in (first, second, third) for r in p.records if r.object_type == "bill"]

    ids = run(scenario())
    assert len(ids) == len(set(ids)) == 30
    # Trusted device from the first sign-in: the re-login needed no MFA.
    assert session.stats.relogins == 1 and session.stats.logins == 2 and session.stats.mfa_answers == 1


def test_revoked_session_is_replaced_transparently(make_session: SessionFactory, control: Control) -> None:
    session = make_session()

    async def scenario() -> int:
        company = await first_company(session)
        control.fault(kind="revoke_session", pathPattern="/vendors", count=1)
        page = await session.list_changes(company, "vendors", modified_since=None)
        await session.aclose()
        return page.total_count

    assert run(scenario()) > 0
    assert session.stats.relogins == 1


def test_mfa_rechallenge_is_answered_with_totp_again(make_session: SessionFactory, control: Control) -> None:
    session = make_session()

    async def scenario() -> int:
        company = await first_company(session)
        control.fault(kind="mfa_rechallenge", pathPattern="/customers", count=1)
        page = await session.list_changes(company, "customers", modified_since=None)
        await session.aclose()
        return page.total_count

    assert run(scenario()) > 0
    assert session.stats.mfa_answers == 2 and session.stats.logins == 1


def test_transient_5xx_is_retried(make_session: SessionFactory, control: Control) -> None:
    session = make_session()

    async def scenario() -> int:
        company = await first_company(session)
        control.fault(kind="error", status=503, pathPattern="/invoices", count=2)
        control.fault(kind="drop_response", mode="abort", pathPattern="/customer-payments", count=1)
        invoices = await session.list_changes(company, "invoices", modified_since=None)
        collected = await session.list_changes(company, "customer_payments", modified_since=None)
        await session.aclose()
        return invoices.total_count + collected.total_count

    assert run(scenario()) > 0
    assert session.stats.retries - session.stats.responses_429 == 3


def test_persistent_5xx_becomes_upstream_unavailable(make_session: SessionFactory, control: Control) -> None:
    session = make_session(throttle=ThrottleConfig(initial_rate=40, max_attempts=3, backoff_base=0.01))

    async def scenario() -> None:
        company = await first_company(session)
        control.fault(kind="error", status=500, pathPattern="/payments")
        with pytest.raises(UpstreamUnavailable) as caught:
            await session.list_changes(company, "payments", modified_since=None)
        assert caught.value.status_code == 500
        await session.aclose()

    run(scenario())
    assert session.stats.retries == 2


def test_latency_spike_slows_the_adaptive_rate(make_session: SessionFactory, control: Control) -> None:
    session = make_session(throttle=ThrottleConfig(initial_rate=40, max_rate=100, latency_floor=0.1))

    async def scenario() -> None:
        company = await first_company(session)
        for _ in range(6):  # a latency baseline
            await session.list_changes(company, "users", modified_since=None)
        control.fault(kind="latency", latencyMs=400, pathPattern="/vendors", count=1)
        await session.list_changes(company, "vendors", modified_since=None)
        await session.aclose()

    run(scenario())
    assert session.throttle.rate < 40
    assert session.stats.retries == 0


def test_shape_change_fails_only_that_object_type(make_session: SessionFactory, control: Control) -> None:
    session = make_session()

    async def scenario() -> None:
        company = await first_company(session)
        control.fault(kind="shape_change", objectType="bill", fromField="totalAmount", toField="grandTotal")
        with pytest.raises(UpstreamChanged) as caught:
            await session.list_changes(company, "bills", modified_since=None)
        assert caught.value.object_type == "bill"
        assert "bill: missing field 'totalAmount'" in caught.value.differences
        assert "bill: unexpected field 'grandTotal'" in caught.value.differences
        for feed in ("vendors", "payments", "invoices"):
            assert (await session.list_changes(company, feed, modified_since=None)).total_count > 0
        await session.aclose()

    run(scenario())
    assert session.stats.retries == 0  # drift is never retried


def test_incremental_listing_returns_only_changes(make_session: SessionFactory, control: Control) -> None:
    session = make_session()

    async def scenario() -> tuple[set[str], set[str]]:
        company = await first_company(session)
        everything = await _all_pages(session, company, "bills")
        assert sum(p.total_count for p in everything[:1]) == 30
        control.advance(advance_minutes=1)
        since = control.now()
        changed = set(control.mutate(action="modifyBills", companyId=company, count=3))
        pages = await _all_pages(session, company, "bills", since)
        await session.aclose()
        return changed, {r.upstream_id for p in pages for r in p.records if r.object_type == "bill"}

    changed, listed = run(scenario())
    assert len(changed) == 3
    assert listed == changed


def test_fetch_object_returns_none_only_for_a_confirmed_absence(make_session: SessionFactory) -> None:
    session = make_session()

    async def scenario() -> None:
        company = await first_company(session)
        page = await session.list_changes(company, "payments", modified_since=None, page_size=500)
        for record in page.records[:12]:
            fetched = (
                await session.fetch_object(company, record.object_type, record.upstream_id)
                if record.object_type != "sync_mapping"
                else record
            )
            assert fetched is not None and fetched.fields == record.fields
        bill = (await session.list_changes(company, "bills", modified_since=None, page_size=1)).records[0]
        assert (await session.fetch_object(company, "bill", bill.upstream_id)) is not None
        for object_type in ("user", "bank_account", "approval_rule"):
            feed = {"user": "users", "bank_account": "bank_accounts", "approval_rule": "bank_accounts"}[
                object_type
            ]
            listed = [
                r
                for r in (await session.list_changes(company, feed, modified_since=None)).records
                if r.object_type == object_type
            ]
            fetched = await session.fetch_object(company, object_type, listed[0].upstream_id)
            assert fetched is not None and fetched.upstream_id == listed[0].upstream_id
        missing = "00000000-0000-0000-0000-000000000000"
        assert await session.fetch_object(company, "bill", missing) is None
        assert await session.fetch_object(company, "payment", missing) is None
        assert await session.fetch_object(company, "user", f"{missing}@{company}") is None
        assert (await session.fetch_object(company, "company", company)) is not None
        await session.aclose()

    run(scenario())


def test_keep_alive_holds_the_session_past_the_idle_timeout(
    make_session: SessionFactory, control: Control
) -> None:
    session = make_session()

    async def scenario() -> None:
        company = await first_company(session)
        for _ in range(3):
            control.advance(advance_minutes=10)
            await session.keep_alive()
        await session.list_changes(company, "vendors", modified_since=None)
        await session.aclose()

    run(scenario())
    assert session.stats.relogins == 0 and session.stats.logins == 1
