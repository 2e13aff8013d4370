"""Money conversions are exact and refuse floats and sub-cent amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from plooto_api.money import exponent, from_minor, to_minor


def test_round_trip_through_minor_units() -> None:
    assert to_minor(Decimal("1234.50"), "CAD") == 123450
    assert from_minor(123450, "CAD") == Decimal("1234.50")
    assert str(from_minor(5, "USD")) == "0.05"
    assert to_minor("1000", "JPY") == 1000 and exponent("JPY") == 0
    assert str(from_minor(1234, "KWD")) == "1.234"
    assert to_minor(Decimal("-3.10"), "CAD") == -310


@pytest.mark.parametrize("bad", [0.1, "1.005", "abc", "NaN", "Infinity"])
def test_refuses_inexact_input(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        to_minor(bad, "CAD")  # type: ignore[arg-type]
