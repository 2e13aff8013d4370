"""Money and FX numbers as the portal's .NET backend emits them, plus a float-free JSON encoder.

Amounts are always `decimal.Decimal`; they are quantized to 2 places (rates to 9) and written into
JSON as number literals straight from their decimal text, never through `float`.
"""

from __future__ import annotations

import json
import secrets
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CENT = Decimal("0.01")
RATE_STEP = Decimal("0.000000001")
ZERO = Decimal("0.00")


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


def precise_timestamp(value: datetime) -> str:
    """ISO-8601 UTC timestamp with microseconds and a `Z` suffix (for `lastModified`)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Decimals are handed to the C JSON encoder as strings wrapped in marks, and the marks (with the
# string's quotes) are cut from the output afterwards, so the text of each Decimal lands in the
# JSON verbatim. The marks hold a NUL (escaped by the encoder as \u0000) and a per-process random
# nonce, so no user text can forge one; two str.replace calls keep this at C speed.
_NONCE = secrets.token_hex(8)
_OPEN = f"\x00{_NONCE}<"
_CLOSE = f">{_NONCE}\x00"
_OPEN_IN_JSON = '"\\u0000' + _NONCE + "<"
_CLOSE_IN_JSON = ">" + _NONCE + '\\u0000"'


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite decimal cannot be written to JSON")
        return f"{_OPEN}{value:f}{_CLOSE}"
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as portal JSON")


def encode_portal_json(value: Any) -> bytes:
    """Serialize to compact JSON with Decimals written verbatim as numbers (never via float)."""
    text = json.dumps(value, default=_default, separators=(",", ":"), allow_nan=False)
    return text.replace(_OPEN_IN_JSON, "").replace(_CLOSE_IN_JSON, "").encode("ascii")


def parse_portal_json(body: bytes) -> Any:
    """Parse request JSON with every non-integer number as a Decimal."""
    return json.loads(body, parse_float=Decimal)
