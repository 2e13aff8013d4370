"""What a payment moves, as the sync mirrors it: its transactions, its FX conversion, the Instant wallet."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select

from plooto_api.jobs import JobContext
from plooto_api.store import models
from plooto_api.sync.engine import SyncEngine

from .conftest import CLERK, CONTROLLER


def _documents(ctx: JobContext, model: Any) -> dict[str, dict[str, Any]]:
    """The served JSON of every stored object of `model`, by portal id."""
    with ctx.sessions() as session:
        return {row.upstream_id: json.loads(row.document) for row in session.scalars(select(model))}


def _events(ctx: JobContext, event_type: str) -> list[models.Event]:
    with ctx.sessions() as session:
        return list(session.scalars(select(models.Event).where(models.Event.type == event_type)))


def _served(document: dict[str, Any]) -> dict[str, Any]:
    """What an object says of itself, less when and how it was last read and changed."""
    return {key: value for key, value in document.items() if key not in {"updated_at", "upstream"}}


async def test_a_payments_status_change_leaves_its_transactions_and_conversion_as_they_are(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # Transactions and FX conversions took their payment's portal status as their own: each status
    # change of a payment rewrote them, with a `transaction.updated` / `fx_conversion.updated` each.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    transactions = _documents(ctx, models.Transaction)
    conversions = _documents(ctx, models.FxConversion)
    assert transactions and conversions
    control.post("/clock", json={"advance_days": 1}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    assert _events(ctx, "payment.status_updated"), "a day moves some payments along"
    after = _documents(ctx, models.Transaction)
    for event in _events(ctx, "transaction.updated"):
        upstream_id = event.data["upstream_id"]
        assert _served(after[upstream_id]) != _served(transactions[upstream_id]), upstream_id
    after = _documents(ctx, models.FxConversion)
    for event in _events(ctx, "fx_conversion.updated"):
        upstream_id = event.data["upstream_id"]
        assert _served(after[upstream_id]) != _served(conversions[upstream_id]), upstream_id


async def test_an_executed_conversion_stays_executed_and_never_precedes_its_quote(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A payment that failed after its exchange turned its conversion back to `expired` with no
    # execution time, and the execution time was the start of the debit day: before the quote.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        exchanged = session.scalars(
            select(models.Payment.upstream_id)
            .where(models.Payment.fx_conversion_id.is_not(None), models.Payment.status == "processing")
            .order_by(models.Payment.id)
        ).first()
        assert exchanged is not None, "the seed has wires past their exchange"
    conversions = _documents(ctx, models.FxConversion)
    executed = [c for c in conversions.values() if c["status"] == "executed"]
    assert executed
    assert all(c["executed_at"] >= c["quoted_at"] for c in executed)  # both UTC, same format
    before = conversions[f"{exchanged}:fx"]
    assert before["status"] == "executed"
    failed = control.post("/mutate", json={"action": "failPayment", "paymentId": exchanged})
    assert failed.status_code == 200, failed.text
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    after = _documents(ctx, models.FxConversion)[f"{exchanged}:fx"]
    assert (after["status"], after["executed_at"]) == ("executed", before["executed_at"])


async def test_the_instant_wallets_are_mirrored_and_instant_payments_are_booked_against_them(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # The company's Plooto Instant balances were dropped, and an Instant payment's debit was booked
    # to the bank account that only names its approvers, whose money never moved.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    wallets = {
        (w["company_id"], w["currency"]): w
        for w in _documents(ctx, models.BankAccount).values()
        if w["kind"] == "instant_wallet"
    }
    assert {currency for _, currency in wallets} == {"CAD", "USD"}
    with ctx.sessions() as session:
        bills = session.scalars(
            select(models.Bill).where(models.Bill.status == "approved").order_by(models.Bill.id)
        ).all()
    for bill in bills:  # one whose payee has a bank account, in the currency of one of its accounts
        created = control.post("/mutate", json={"action": "createPayment", "billId": bill.upstream_id,
                                                "userEmail": CONTROLLER, "paymentMethod": "PlootoInstant",
                                                "amount": "10.00"})  # fmt: skip
        if created.status_code == 200:
            break
    else:
        raise AssertionError("no approved bill can be paid from the Instant wallet")
    paid = created.json()["changed"][0]
    control.post("/mutate", json={"action": "approvePayment", "paymentId": paid, "userEmail": CLERK})
    control.post("/clock", json={"advance_days": 1}).raise_for_status()
    assert (await engine.sync_connection(connection_id)).ok  # the balances are read with the accounts
    debit = _documents(ctx, models.Transaction)[f"{paid}:debit"]
    accounts = {a["id"]: a for a in _documents(ctx, models.BankAccount).values()}
    wallet = accounts[debit["bank_account_id"]]
    assert wallet["kind"] == "instant_wallet" and wallet["currency"] == debit["amount"]["currency"]
    before = wallets[(wallet["company_id"], wallet["currency"])]
    assert Decimal(before["balance"]["amount"]) - Decimal(wallet["balance"]["amount"]) == Decimal(
        debit["amount"]["amount"]
    )
    assert wallet["id"] == before["id"]  # one wallet, the same from sync to sync


async def test_a_payment_first_seen_failed_or_recalled_keeps_its_debit_and_a_recall_its_credit(
    ctx: JobContext, make_connection: Callable[..., str]
) -> None:
    # Only payments in a "debited" status had transactions: one first seen Failed or Recalled had
    # none, though the portal gives its debitedDate (its money left the account that day).
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        ended = dict(
            session.execute(
                select(models.Payment.upstream_id, models.Payment.upstream_status_raw).where(
                    models.Payment.upstream_status_raw.in_(["Failed", "Recalled"])
                )
            ).all()
        )
    assert set(ended.values()) == {"Failed", "Recalled"}, "the seed has failed and recalled payments"
    transactions = _documents(ctx, models.Transaction)
    accounts = {a["id"]: a for a in _documents(ctx, models.BankAccount).values()}
    # (A payment the bank refused at its debit moment, for want of funds, was never debited.)
    assert any(f"{u}:debit" in transactions for u, status_raw in ended.items() if status_raw == "Failed")
    for upstream_id, status_raw in ended.items():
        debit = transactions.get(f"{upstream_id}:debit")
        if debit is None and status_raw == "Failed":
            continue
        assert debit is not None, upstream_id
        assert accounts[debit["bank_account_id"]]["kind"] == "bank"
        credit = transactions.get(f"{upstream_id}:recall")
        if status_raw == "Failed":
            assert credit is None  # the portal shows no money back for a failed payment
            continue
        assert credit is not None and credit["kind"] == "credit" and credit["amount"] == debit["amount"]
        assert accounts[credit["bank_account_id"]]["kind"] == "instant_wallet"
        assert credit["occurred_on"] >= debit["occurred_on"]


async def test_a_payable_payment_says_which_account_it_is_paid_from(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # debit_account_masked was always null, though the portal's payment shows its "Pay From"
    # (`Main Account / *********863`). An Instant payment is paid from the wallet, which has no number.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        bills = session.scalars(
            select(models.Bill).where(models.Bill.status == "approved").order_by(models.Bill.id)
        ).all()
    for bill in bills:
        created = control.post("/mutate", json={"action": "createPayment", "billId": bill.upstream_id,
                                                "userEmail": CONTROLLER, "paymentMethod": "PlootoInstant",
                                                "amount": "10.00"})  # fmt: skip
        if created.status_code == 200:
            break
    else:
        raise AssertionError("no approved bill can be paid from the Instant wallet")
    instant = created.json()["changed"][0]
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    accounts = {a["id"]: a for a in _documents(ctx, models.BankAccount).values()}
    payments = [p for p in _documents(ctx, models.Payment).values() if p["direction"] == "payable"]
    assert len(payments) > 1
    assert next(p for p in payments if p["upstream_id"] == instant)["method"] == "instant"
    for payment in payments:
        masked = accounts[payment["debit_bank_account_id"]]["account_number_masked"]
        if payment["method"] == "instant":
            assert payment["debit_account_masked"] is None
        else:
            assert masked and payment["debit_account_masked"] == masked, payment["upstream_id"]
        assert payment["credit_account_masked"] is None  # the portal shows the payee's bank, no number
    with ctx.sessions() as session:  # the column the filters and reports read says the same
        stored = session.scalars(select(models.Payment.debit_account_masked)).all()
        assert sum(1 for value in stored if value) == sum(1 for p in payments if p["method"] != "instant")


async def test_a_receivable_payment_has_its_status_history(
    ctx: JobContext, make_connection: Callable[..., str], control: httpx.Client
) -> None:
    # A customer payment's status_history was always empty, while a payable's came from its trail.
    connection_id = make_connection()
    engine = SyncEngine(ctx)
    assert (await engine.sync_connection(connection_id)).ok
    with ctx.sessions() as session:
        invoices = session.scalars(
            select(models.Invoice.upstream_id)
            .where(models.Invoice.status == "sent")
            .order_by(models.Invoice.id)
        ).all()
    for invoice in invoices:
        created = control.post("/mutate", json={"action": "customerPays", "invoiceId": invoice})
        if created.status_code == 200:
            break
    else:
        raise AssertionError("no sent invoice can be paid by its customer")
    collected = created.json()["changed"][0]
    for _ in range(3):  # debited (or charged), clearing, deposited
        control.post("/clock", json={"advance_days": 1}).raise_for_status()
    assert (await engine.sync_connection(connection_id, cadence="fast")).ok
    receivables = [p for p in _documents(ctx, models.Payment).values() if p["direction"] == "receivable"]
    assert {p["status"] for p in receivables} >= {"completed", "failed"}
    for payment in receivables:  # the seed's: the first status and the one it is in now
        history = payment["status_history"]
        assert history and history[0]["status"] == "scheduled", payment["upstream_id"]
        assert history[-1]["status"] == payment["status"]
        times = [change["occurred_at"] for change in history]
        assert times == sorted(times) and all(t.endswith("Z") or t.endswith("+00:00") for t in times)
    mine = next(p for p in receivables if p["upstream_id"] == collected)
    assert [(c["status"], c["status_raw"]) for c in mine["status_history"]] == [
        ("scheduled", "Pending"),
        ("processing", "FundsDebited"),
        ("in_transit", "Clearing"),
        ("completed", "Completed"),
    ]
    assert mine["status"] == "completed"
