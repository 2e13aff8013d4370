"""Business-day calendars per rail currency (Canadian holidays for CAD, US holidays for USD).

The portal runs on Toronto time; cut-offs and lifecycle moments are wall-clock times there,
converted to UTC for storage.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from plooto_sandbox.errors import invalid_field

PORTAL_TZ = ZoneInfo("America/Toronto")
# [choice] How far dates may reach (README §7): a debit or a scheduled send at most a year after
# today; bill, invoice and recurring-plan dates at most ten years either side of today.
SCHEDULE_HORIZON = timedelta(days=365)
DOCUMENT_DATE_RANGE = timedelta(days=3652)


class BusinessCalendar:
    """Holiday-aware business-day arithmetic for one country's payment system."""

    __slots__ = ("_country", "_holidays", "_years")

    def __init__(self, country: str) -> None:
        self._country = country
        self._holidays: set[date] = set()
        self._years: set[int] = set()

    def _ensure_year(self, year: int) -> None:
        if year in self._years:
            return
        table = holidays.Canada(years=year) if self._country == "CA" else holidays.US(years=year)
        self._holidays.update(table.keys())
        self._years.add(year)

    def is_business_day(self, day: date) -> bool:
        """True on weekdays that are not public holidays of this calendar."""
        if day.weekday() >= 5:
            return False
        self._ensure_year(day.year)
        return day not in self._holidays

    def add_business_days(self, day: date, count: int) -> date:
        """The date `count` business days after `day` (count 0 = `day` itself, even if closed)."""
        current = day
        remaining = count
        while remaining > 0:
            current += timedelta(days=1)
            if self.is_business_day(current):
                remaining -= 1
        return current

    def next_business_day_on_or_after(self, day: date) -> date:
        """`day` if it is a business day, else the first business day after it."""
        current = day
        while not self.is_business_day(current):
            current += timedelta(days=1)
        return current


CANADA = BusinessCalendar("CA")
UNITED_STATES = BusinessCalendar("US")


def calendar_for(currency: str) -> BusinessCalendar:
    """USD rails follow the US calendar; everything else settles through Canada."""
    return UNITED_STATES if currency == "USD" else CANADA


def check_scheduled_date(day: date, today: date, field: str) -> None:
    """400 ValidationFailed if `day` (a debit or send date) is more than SCHEDULE_HORIZON after `today`."""
    latest = today + SCHEDULE_HORIZON
    if day > latest:
        raise invalid_field(
            field, f"{field} can be at most {SCHEDULE_HORIZON.days} days ahead, {latest} at the latest."
        )


def check_document_date(day: date, today: date, field: str) -> None:
    """400 ValidationFailed if `day` (a bill's or invoice's date) is not within DOCUMENT_DATE_RANGE of `today`."""
    earliest, latest = today - DOCUMENT_DATE_RANGE, today + DOCUMENT_DATE_RANGE
    if not earliest <= day <= latest:
        raise invalid_field(field, f"{field} must be between {earliest} and {latest}.")


def local_date(moment: datetime) -> date:
    """The Toronto calendar date of a UTC instant."""
    return moment.astimezone(PORTAL_TZ).date()


def local_time(moment: datetime) -> time:
    """The Toronto wall-clock time of a UTC instant."""
    return moment.astimezone(PORTAL_TZ).time()


def at_local(day: date, wall_clock: time) -> datetime:
    """The UTC instant of a Toronto wall-clock time on `day`."""
    return datetime.combine(day, wall_clock, tzinfo=PORTAL_TZ).astimezone(UTC)
