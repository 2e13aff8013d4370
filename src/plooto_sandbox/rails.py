"""Payment rails: cut-offs, fees, FX rates and the business-day timeline of each rail (domain §4)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache

from plooto_sandbox.business_days import at_local, calendar_for, local_date, local_time
from plooto_sandbox.model import PaymentMethod, PaymentStatus
from plooto_sandbox.money import money, rate

# Same-day debit cut-offs, Toronto time. The domain notes found none published; these mirror
# what Canadian banks typically accept for same-day file submission.
CUT_OFF: dict[PaymentMethod, time] = {
    PaymentMethod.EFT: time(15, 0),
    PaymentMethod.ACH: time(15, 0),
    PaymentMethod.EMAIL_MONEY_TRANSFER: time(15, 0),
    PaymentMethod.PLOOTO_INSTANT: time(15, 0),
    PaymentMethod.CHEQUE: time(14, 0),
    PaymentMethod.WIRE: time(12, 0),
    PaymentMethod.CARD: time(17, 0),
}
SETTLEMENT_MORNING = time(9, 0)

FLAT_FEE: dict[PaymentMethod, Decimal] = {
    PaymentMethod.EFT: Decimal("0.50"),
    PaymentMethod.ACH: Decimal("0.50"),
    PaymentMethod.EMAIL_MONEY_TRANSFER: Decimal("0.50"),
    PaymentMethod.CHEQUE: Decimal("1.99"),
    PaymentMethod.WIRE: Decimal("9.99"),
    PaymentMethod.PLOOTO_INSTANT: Decimal("0.00"),
}
CARD_FEE_RATE = Decimal("0.029")

# Business days from debit to arrival (EMT: from claim).
ARRIVAL_DAYS: dict[PaymentMethod, int] = {
    PaymentMethod.EFT: 2,
    PaymentMethod.ACH: 2,
    PaymentMethod.CHEQUE: 5,
    PaymentMethod.WIRE: 3,
    PaymentMethod.CARD: 2,
    PaymentMethod.PLOOTO_INSTANT: 1,
    PaymentMethod.EMAIL_MONEY_TRANSFER: 1,
}

# Value of one unit in CAD at mid-market; the portal adds its margin on top ("no FX fees").
CAD_PER_UNIT: dict[str, Decimal] = {
    "CAD": Decimal("1"),
    "USD": Decimal("1.365"),
    "EUR": Decimal("1.485"),
    "GBP": Decimal("1.72"),
}
FX_MARGIN = Decimal("0.01")
SUPPORTED_CURRENCIES = frozenset(CAD_PER_UNIT)


def fee_for(method: PaymentMethod, source_amount: Decimal) -> Decimal:
    """The transaction fee in the source currency."""
    if method is PaymentMethod.CARD:
        return money(source_amount * CARD_FEE_RATE)
    return FLAT_FEE[method]


@lru_cache(maxsize=64)
def mid_market_rate(source_currency: str, destination_currency: str) -> Decimal:
    """Source units per destination unit at mid-market."""
    return rate(CAD_PER_UNIT[destination_currency] / CAD_PER_UNIT[source_currency])


@lru_cache(maxsize=64)
def portal_rate(source_currency: str, destination_currency: str) -> Decimal:
    """The rate the portal applies: mid-market plus its margin (1 when no conversion)."""
    if source_currency == destination_currency:
        return rate(Decimal(1))
    return rate(mid_market_rate(source_currency, destination_currency) * (1 + FX_MARGIN))


def earliest_debit_date(method: PaymentMethod, currency: str, now: datetime) -> date:
    """Today if it is a business day and before the rail's cut-off, else the next business day."""
    calendar = calendar_for(currency)
    today = local_date(now)
    if calendar.is_business_day(today) and local_time(now) < CUT_OFF[method]:
        return today
    return calendar.next_business_day_on_or_after(today + timedelta(days=1))


def debit_moment(method: PaymentMethod, debit_date: date) -> datetime:
    """Debits are submitted at the rail's cut-off on the debit date."""
    return at_local(debit_date, CUT_OFF[method])


@lru_cache(maxsize=4096)
def timeline(
    method: PaymentMethod, source_currency: str, debit_date: date, cross_currency: bool
) -> tuple[tuple[datetime, PaymentStatus], ...]:
    """Every status a payment passes through after Pending, with the instant it is reached.

    The last element is Completed except for e-mail transfers, which wait in Clearing for a claim.
    """
    calendar = calendar_for(source_currency)
    debit = debit_moment(method, debit_date)

    def morning(days: int) -> datetime:
        return at_local(calendar.add_business_days(debit_date, days), SETTLEMENT_MORNING)

    steps: list[tuple[datetime, PaymentStatus]] = [(debit, PaymentStatus.FUNDS_DEBITED)]
    if method is PaymentMethod.WIRE:
        if cross_currency:
            steps.append((debit + timedelta(hours=1), PaymentStatus.EXCHANGING))
        steps += [(morning(1), PaymentStatus.PROCESSING), (morning(3), PaymentStatus.COMPLETED)]
    elif method is PaymentMethod.CHEQUE:
        steps += [(morning(1), PaymentStatus.CLEARING), (morning(5), PaymentStatus.COMPLETED)]
    elif method is PaymentMethod.PLOOTO_INSTANT:
        steps += [(debit + timedelta(hours=2), PaymentStatus.CLEARING), (morning(1), PaymentStatus.COMPLETED)]
    elif method is PaymentMethod.EMAIL_MONEY_TRANSFER:
        steps.append((morning(1), PaymentStatus.CLEARING))
    else:
        steps += [(morning(1), PaymentStatus.CLEARING), (morning(2), PaymentStatus.COMPLETED)]
    return tuple(steps)


@lru_cache(maxsize=4096)
def estimated_arrival(method: PaymentMethod, source_currency: str, debit_date: date) -> date:
    """Arrival estimate "based on requested debit date" (EMT assumes a claim on the first day)."""
    calendar = calendar_for(source_currency)
    return calendar.add_business_days(debit_date, ARRIVAL_DAYS[method])
