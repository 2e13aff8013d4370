"""Money and FX numbers as the portal's .NET backend emits them, plus a float-free JSON encoder.

Amounts are always `decimal.Decimal`; they are quantized to 2 places (rates to 9) and written into
JSON as number literals straight from their decimal text, never through `float`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CENT = Decimal("0.01")
RATE_STEP = Decimal("0.000000001")
ZERO = Decimal("0.00")

_encode_string = json.encoder.encode_basestring_ascii


def money(value: Decimal) -> Decimal:
    """Quantize to cents, rounding half up as the portal displays amounts."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def rate(value: Decimal) -> Decimal:
    """Quantize an exchange rate to 9 decimals."""
    return value.quantize(RATE_STEP, rounding=ROUND_HALF_UP)


def cents(amount: int) -> Decimal:
    """Build a 2-decimal Decimal from an integer number of cents."""
    return Decimal(amount).scaleb(-2)


def timestamp(value: datetime) -> str:
    """ISO-8601 UTC timestamp with a `Z` suffix, whole seconds."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite decimal cannot be written to JSON")
        out.append(format(value, "f"))
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_string(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, Sequence):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, datetime):
        out.append(_encode_string(timestamp(value)))
    elif isinstance(value, date):
        out.append(_encode_string(value.isoformat()))
    elif isinstance(value, float):
        # Floats are a bug anywhere near money; refuse them loudly instead of rounding silently.
        raise TypeError("float values are not allowed in portal JSON")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as portal JSON")


def encode_portal_json(value: Any) -> bytes:
    """Serialize to compact JSON with Decimals written verbatim as numbers."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("ascii")


def parse_portal_json(body: bytes) -> Any:
    """Parse request JSON with every non-integer number as a Decimal."""
    return json.loads(body, parse_float=Decimal)
